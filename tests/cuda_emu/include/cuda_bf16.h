// CPU emulation of __nv_bfloat16 (tests only): see tg_emu_bf16.h.
#pragma once
#include "tg_emu_bf16.h"
