#!/usr/bin/env bash
# The README's main command: set up (packages, configure, build) and run moelab.
# For now it prints what this build of moelab is (`moelab info`); the training demo replaces it
# when the trainer lands.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
moelab_install_debs
moelab_build "$MOELAB_ROOT/build"
"$MOELAB_ROOT/build/train/moelab" info
