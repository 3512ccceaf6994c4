// CPU emulation of the CUDA runtime and device built-ins used by csrc/cuda (tests only).
#pragma once
#include "tg_emu.h"
