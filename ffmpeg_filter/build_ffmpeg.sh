#!/usr/bin/env bash
# Build a minimal FFmpeg 7.1 with --enable-libtorch against the torch in the given Python environment,
# for FFmpeg's own `dnn_processing` filter with a model from `hypersr export torchscript`.
#
#   ffmpeg_filter/build_ffmpeg.sh [PYTHON]      # prints the path of the built ffmpeg binary
#
# The source is Debian trixie's `ffmpeg` source package (fetched with a private apt configuration, the
# system's sources stay untouched). Two changes for current torch: the configure check needs C++20, and
# getXPUHooks().initXPU() is now init(). The build is cached under $HYPERSR_CACHE (default
# ~/.cache/hypersr), keyed by the FFmpeg and torch versions; a finished build is reused at once.
set -euo pipefail

PYTHON=${1:-python3}
CACHE=${HYPERSR_CACHE:-$HOME/.cache/hypersr}
TORCH_DIR=$("$PYTHON" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
TORCH_VERSION=$("$PYTHON" -c 'import torch; print(torch.__version__)')
FFMPEG_SERIES=7.1
PREFIX="$CACHE/ffmpeg-$FFMPEG_SERIES-torch-$TORCH_VERSION"
if [ -x "$PREFIX/bin/ffmpeg" ]; then
  echo "$PREFIX/bin/ffmpeg"
  exit 0
fi

for tool in apt-get gcc g++ make tar xz; do
  command -v "$tool" >/dev/null || { echo "build_ffmpeg: needs $tool (Debian: apt-get install build-essential xz-utils)" >&2; exit 1; }
done

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/ffmpeg-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial"
echo "deb-src http://deb.debian.org/debian trixie main" > "$WORK/apt/sources.list"
APT=(apt-get -q -o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache")
(cd "$WORK" && "${APT[@]}" update >&2 && "${APT[@]}" source --download-only "ffmpeg/trixie" >&2)
ORIG=$(ls "$WORK"/ffmpeg_$FFMPEG_SERIES.*.orig.tar.xz | head -1)
[ -f "$ORIG" ] || { echo "build_ffmpeg: Debian trixie no longer has FFmpeg $FFMPEG_SERIES sources" >&2; exit 1; }
tar -C "$WORK" -xf "$ORIG"
SRC=$(ls -d "$WORK"/ffmpeg-$FFMPEG_SERIES*/ | head -1)

sed -i 's/check_cxxflags -std=c++17 && require_cpp libtorch/check_cxxflags -std=c++20 \&\& require_cpp libtorch/' "$SRC/configure"
sed -i 's/getXPUHooks().initXPU()/getXPUHooks().init()/' "$SRC/libavfilter/dnn/dnn_backend_torch.cpp"

cd "$SRC"
./configure --prefix="$WORK/install" --disable-everything --disable-doc --disable-debug --disable-autodetect \
  --disable-network --disable-x86asm --disable-ffplay --disable-ffprobe --enable-libtorch \
  --enable-filter=dnn_processing,format,scale,null --enable-demuxer=yuv4mpegpipe,rawvideo \
  --enable-muxer=yuv4mpegpipe,rawvideo --enable-decoder=wrapped_avframe,rawvideo \
  --enable-encoder=wrapped_avframe,rawvideo --enable-protocol=file,pipe,fd \
  --extra-cflags="-I$TORCH_DIR/include -I$TORCH_DIR/include/torch/csrc/api/include" \
  --extra-cxxflags="-I$TORCH_DIR/include -I$TORCH_DIR/include/torch/csrc/api/include" \
  --extra-ldflags="-L$TORCH_DIR/lib -Wl,-rpath,$TORCH_DIR/lib" >&2
make -j"$(nproc)" >&2
make install >&2
mkdir -p "$(dirname "$PREFIX")"
rm -rf "$PREFIX.tmp" && mv "$WORK/install" "$PREFIX.tmp" && mv "$PREFIX.tmp" "$PREFIX"  # only complete builds count
echo "$PREFIX/bin/ffmpeg"
