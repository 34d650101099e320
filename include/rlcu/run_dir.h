// The run directory of `rlcu train` and `rlcu sft` (run.output_dir): whether a run may start there, the lock held
// for the run's lifetime, and the record of what a resumed run reads from outside it.
//
// Starting (open_run_dir):
//   - a directory that holds a run (config.json, metrics.jsonl, samples.jsonl, eval_samples.jsonl, inputs.json,
//     checkpoints/ or TensorBoard events) is refused for a new run: nothing in it is touched, the message says that `--resume`
//     continues it and `--overwrite` starts over;
//   - --resume (or run.resume = auto with a checkpoint there) continues the run from its latest checkpoint;
//     run.resume = auto without a checkpoint starts fresh (clearing what an earlier attempt left, as --overwrite);
//   - --overwrite removes exactly the files rlcu writes into a run directory (the list above; other files stay)
//     before the new run starts.
// Locking: RUN/rlcu.lock is opened and locked with flock(LOCK_EX | LOCK_NB) before anything is written and stays
// locked until the RunDirLock is destroyed; the file holds {"pid", "host", "command"} of the holder. A second
// process fails at once with an error naming that holder. The lock belongs to the open file description, which the
// kernel closes when the process ends however it ends (SIGKILL included), so a lock never outlives its process; the
// descriptor is close-on-exec, so child processes (reward commands) do not hold it. The file itself stays.
// Inputs (record_run_inputs / verify_run_inputs): RUN/inputs.json lists every file a run reads from outside its
// directory (model, reference, tokenizer, data, chat template, reward model) with its size and XXH64 content hash,
// under the config key that named it. A resumed run recomputes them first and refuses a file that is missing,
// changed or new, naming the key and the file, before it loads anything.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rlcu {

struct RunDirRequest {
  std::string command;                // "train" or "sft" (for messages)
  std::string dir;                    // run.output_dir
  bool resume = false;                // --resume RUN_DIR was given
  bool overwrite = false;             // --overwrite was given
  std::string resume_mode = "never";  // run.resume: never | auto
};

// Holds the exclusive lock on a run directory (see above); move-only.
class RunDirLock {
 public:
  RunDirLock() = default;
  // Creates `dir` when missing and locks RUN/rlcu.lock; throws rlcu::Error naming the holder when it is locked.
  static RunDirLock acquire(const std::string& dir, const std::string& command);
  RunDirLock(RunDirLock&& o) noexcept;
  RunDirLock& operator=(RunDirLock&& o) noexcept;
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  ~RunDirLock();
  bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

struct RunDirectory {
  RunDirLock lock;
  bool resuming = false;  // continue from the latest checkpoint (else: a fresh run)
};

// Applies the rules above and returns the locked directory. Throws rlcu::Error (exit 1) for a directory that holds
// a run, one in use by another process, or --resume without a checkpoint; rlcu::UsageError for --resume together
// with --overwrite.
RunDirectory open_run_dir(const RunDirRequest& req);

// True when `dir` holds any file a run writes (see above).
bool run_dir_holds_run(const std::string& dir);

// A path the run reads from outside its directory, named by its config key ("model.path"). A directory input
// stands for its top-level *.safetensors, *.json and *.jinja files.
struct RunInput {
  std::string key;
  std::string path;
};

// Writes RUN/inputs.json for `inputs` (atomically). Throws rlcu::Error naming a file it cannot read.
void record_run_inputs(const std::string& run_dir, const std::vector<RunInput>& inputs);
// Checks `inputs` against RUN/inputs.json; throws rlcu::Error naming the key and the file that is missing, changed
// or new. A run without inputs.json (written by an older rlcu) is recorded now, with a warning.
void verify_run_inputs(const std::string& run_dir, const std::vector<RunInput>& inputs);

// XXH64 of `n` bytes (the xxHash specification; `xxhsum -H64` prints the same value).
uint64_t xxh64(const void* data, size_t n, uint64_t seed = 0);
// XXH64 of a file's contents, read in chunks; throws rlcu::Error naming the file.
uint64_t file_xxh64(const std::string& path);

}  // namespace rlcu
