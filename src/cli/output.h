// Output sink shared by the commands that write result files (score, generate, eval): rlcu::OutputFile.
#pragma once

#include "rlcu/output_file.h"

namespace rlcu::cli {

using Output = rlcu::OutputFile;

}  // namespace rlcu::cli
