"""Shared fixtures."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("MUJOCO_GL", "egl")  # no display on CI; rendering tests pick their own backend
warnings.filterwarnings("ignore", message=".*DISPLAY environment variable is missing.*")
