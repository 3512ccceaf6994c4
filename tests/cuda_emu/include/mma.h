// CPU emulation of nvcuda::wmma (tests only): see tg_emu_wmma.h.
#pragma once
#include "tg_emu_wmma.h"
