#!/usr/bin/env bash
# Side-by-side timings of compressed conversion: vdisk against qemu-img.
#
#   benches/compress_compare.sh [WORKDIR]
#
# Generates (once) a deterministic 1 GiB raw image: a third holes, a fifth random bytes,
# the rest compressible non-zero text; then times raw->qcow2 compressed (zlib, zstd) and
# compressed qcow2->raw with both tools, printing time ratios, output size ratios and peak
# RSS (/usr/bin/time -f %M). Build first: cargo build --release.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VDISK=${VDISK:-${CARGO_TARGET_DIR:-$ROOT/target}/release/vdisk}
WORK=${1:-/tmp/vdisk-compress-bench}
SRC=$WORK/src.raw
mkdir -p "$WORK"
[ -x "$VDISK" ] || { echo "build vdisk first: cargo build --release" >&2; exit 1; }

if [ ! -f "$SRC" ]; then
    echo "generating $SRC (1 GiB)" >&2
    python3 - "$SRC" <<'PY'
import random, sys
MiB = 1 << 20
r = random.Random(20240601)
words = [bytes(r.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 10)))
         for _ in range(2000)]
def text_block():
    out, n = [], 0
    while n < MiB:
        line = b" ".join(r.choice(words) for _ in range(r.randint(4, 14))) + b"\n"
        out.append(line); n += len(line)
    return b"".join(out)[:MiB]
texts = [text_block() for _ in range(48)]
with open(sys.argv[1], "wb") as f:
    f.truncate(1024 * MiB)
    for i in range(1024):
        k = i % 15                      # 5/15 holes, 3/15 random, 7/15 text
        if k < 5:
            continue
        f.seek(i * MiB)
        f.write(r.randbytes(MiB) if k < 8 else texts[r.randrange(len(texts))])
PY
fi

# run NAME OUT CMD...: time one command, print "NAME seconds peak_kib out_bytes"
run() {
    local name=$1 out=$2; shift 2
    rm -f "$out"
    sync
    local t0 t1 rss
    t0=$(date +%s.%N)
    /usr/bin/time -f %M -o "$WORK/rss" "$@" >/dev/null
    t1=$(date +%s.%N)
    rss=$(tail -1 "$WORK/rss")
    local secs out_bytes
    secs=$(echo "$t1 - $t0" | bc)
    out_bytes=$(stat -c %s "$out")
    printf '%-30s %7.2f s  %7d KiB  %11d bytes\n' "$name" "$secs" "$rss" "$out_bytes"
    printf '%s\t%s\t%s\t%s\n' "$name" "$secs" "$rss" "$out_bytes" >>"$WORK/results"
}
ratio() { echo "scale=3; $1 / $2" | bc; }
# field NAME COLUMN: 2 seconds, 3 peak KiB, 4 output bytes
field() { awk -F'\t' -v k="$1" -v n="$2" '$1 == k {v = $n} END {print v}' "$WORK/results"; }

: >"$WORK/results"
Q=$WORK/q.qcow2; V=$WORK/v.qcow2
run "qemu-img -c zlib" "$Q.zlib" qemu-img convert -c -O qcow2 "$SRC" "$Q.zlib"
run "qemu-img -c -m 8 -W zlib" "$Q.zlibW" qemu-img convert -c -m 8 -W -O qcow2 "$SRC" "$Q.zlibW"
run "vdisk -c zlib" "$V.zlib" "$VDISK" convert -c -O qcow2 "$SRC" "$V.zlib"
run "qemu-img -c zstd" "$Q.zstd" qemu-img convert -c -O qcow2 -o compression_type=zstd "$SRC" "$Q.zstd"
run "vdisk -c zstd" "$V.zstd" "$VDISK" convert -c -O qcow2 -o compression_type=zstd "$SRC" "$V.zstd"
run "qemu-img zlib qcow2->raw" "$WORK/q.raw" qemu-img convert -O raw "$Q.zlib" "$WORK/q.raw"
run "vdisk zlib qcow2->raw" "$WORK/v.raw" "$VDISK" convert -O raw "$Q.zlib" "$WORK/v.raw"
run "qemu-img zstd qcow2->raw" "$WORK/q.raw" qemu-img convert -O raw "$Q.zstd" "$WORK/q.raw"
run "vdisk zstd qcow2->raw" "$WORK/v.raw" "$VDISK" convert -O raw "$Q.zstd" "$WORK/v.raw"

qemu-img check -q "$V.zlib" && qemu-img check -q "$V.zstd"
qemu-img compare -q -f raw -F qcow2 "$SRC" "$V.zlib"
qemu-img compare -q -f raw -F qcow2 "$SRC" "$V.zstd"

echo
echo "zlib time  vdisk/qemu-img -c        : $(ratio "$(field 'vdisk -c zlib' 2)" "$(field 'qemu-img -c zlib' 2)")  (goal <= 0.33)"
echo "zlib time  vdisk/qemu-img -c -m 8 -W: $(ratio "$(field 'vdisk -c zlib' 2)" "$(field 'qemu-img -c -m 8 -W zlib' 2)")  (goal <= 0.6)"
echo "zlib size  vdisk/qemu-img           : $(ratio "$(field 'vdisk -c zlib' 4)" "$(field 'qemu-img -c zlib' 4)")  (goal <= 1.03)"
echo "zstd time  vdisk/qemu-img           : $(ratio "$(field 'vdisk -c zstd' 2)" "$(field 'qemu-img -c zstd' 2)")  (goal <= 0.7)"
echo "zstd size  vdisk/qemu-img           : $(ratio "$(field 'vdisk -c zstd' 4)" "$(field 'qemu-img -c zstd' 4)")"
echo "zlib qcow2->raw time vdisk/qemu-img : $(ratio "$(field 'vdisk zlib qcow2->raw' 2)" "$(field 'qemu-img zlib qcow2->raw' 2)")  (goal <= 1)"
echo "zstd qcow2->raw time vdisk/qemu-img : $(ratio "$(field 'vdisk zstd qcow2->raw' 2)" "$(field 'qemu-img zstd qcow2->raw' 2)")  (goal <= 1)"
echo "peak RSS of vdisk (KiB)             : $(awk -F'\t' '$1 ~ /^vdisk/ {print $3}' "$WORK/results" | sort -n | tail -1)  (goal < 131072)"
