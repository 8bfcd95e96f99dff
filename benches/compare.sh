#!/usr/bin/env bash
# Compare vdisk with qemu-img on the same 1 GiB image: wall time (best of $RUNS runs), peak
# RSS, and a check that both outputs hold the same guest data (qemu-img compare).
#
#   benches/compare.sh              # build, generate the image once, run every row
#   RUNS=5 BENCH_DIR=/big/disk benches/compare.sh
#   benches/compare.sh convert      # only rows whose name contains "convert"
#
# Files go to $BENCH_DIR (default /tmp/vdisk-bench): the source image src.raw (made by
# benches/mkimage.py: ~1/3 holes, ~1/5 random data, the rest compressible text) is kept
# between runs; outputs are overwritten.
#
# Adding a row: write a function row_NAME that calls `measure` twice (once per tool) and
# `verify`, then add NAME to ROWS below. See row_convert_raw_to_qcow2 for the pattern.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/vdisk-bench}
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
FILTER=${1:-}
VDISK="${CARGO_TARGET_DIR:-$ROOT/target}/release/vdisk"
QEMU_IMG=${QEMU_IMG:-qemu-img}

# Rows, in order (later rows may use outputs of earlier ones).
ROWS=(
    convert_raw_to_qcow2
    convert_qcow2_to_raw
    convert_raw_to_qcow2_zlib
    convert_raw_to_qcow2_zlib_vs_W
    convert_raw_to_qcow2_zstd
    convert_qcow2_zlib_to_raw
    convert_qcow2_zstd_to_raw
    # Candidates as the subcommands land: snapshot_create, commit, check.
)

die() { echo "compare.sh: $*" >&2; exit 1; }

command -v "$QEMU_IMG" >/dev/null || die "qemu-img not found: install qemu-utils"
command -v python3 >/dev/null || die "python3 not found"
if [[ ! -x /usr/bin/time ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get install -y -qq time >/dev/null
    else
        die "/usr/bin/time not found: install the 'time' package"
    fi
fi

echo "== building vdisk (release)"
(cd "$ROOT" && cargo build --release --quiet)

mkdir -p "$BENCH_DIR"
SRC="$BENCH_DIR/src.raw"
STAMP="$BENCH_DIR/src.raw.params"
PARAMS="size=${SIZE_MIB}MiB $(sha256sum "$ROOT/benches/mkimage.py" | cut -c1-16)"
if [[ ! -f "$SRC" || "$(cat "$STAMP" 2>/dev/null)" != "$PARAMS" ]]; then
    echo "== generating $SRC ($SIZE_MIB MiB)"
    python3 "$ROOT/benches/mkimage.py" "$SRC" "$SIZE_MIB"
    echo "$PARAMS" >"$STAMP"
fi

echo "== $("$QEMU_IMG" --version | head -1)"
echo "== vdisk $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), best of $RUNS runs, $(nproc) CPUs"

# measure OUTPUT CMD...: run CMD $RUNS times (removing OUTPUT before each run); set
# BEST_S to the best wall time in seconds and PEAK_MIB to the largest peak RSS in MiB.
measure() {
    local output=$1
    shift
    local tfile="$BENCH_DIR/time.out"
    BEST_S=""
    PEAK_MIB=0
    for ((i = 0; i < RUNS; i++)); do
        rm -f "$output"
        sync
        local start end secs kib
        start=$(date +%s.%N)
        /usr/bin/time -f %M -o "$tfile" "$@" >/dev/null
        end=$(date +%s.%N)
        secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
        kib=$(tail -1 "$tfile")
        if [[ -z $BEST_S ]] || awk -v a="$secs" -v b="$BEST_S" 'BEGIN { exit !(a < b) }'; then
            BEST_S=$secs
        fi
        local mib=$((kib / 1024))
        if ((mib > PEAK_MIB)); then PEAK_MIB=$mib; fi
    done
}

# verify A B: qemu-img compare must find the two images' guest data identical.
verify() {
    if "$QEMU_IMG" compare -q "$1" "$2"; then
        VERIFIED=identical
    else
        VERIFIED=DIFFERENT
        FAILED=1
    fi
}

RESULTS=()
FAILED=0

# record NAME: append one table row from the last two measurements and verification.
record() {
    local name=$1
    RESULTS+=("$(printf '%-30s %9.2f %11.2f %7.2f %10d %12d  %s' \
        "$name" "$V_S" "$Q_S" "$(awk -v a="$V_S" -v b="$Q_S" 'BEGIN { print a / b }')" "$V_MIB" "$Q_MIB" "$VERIFIED")")
}

row_convert_raw_to_qcow2() {
    measure "$BENCH_DIR/vdisk.qcow2" "$VDISK" convert -f raw -O qcow2 "$SRC" "$BENCH_DIR/vdisk.qcow2"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu.qcow2" "$QEMU_IMG" convert -f raw -O qcow2 "$SRC" "$BENCH_DIR/qemu.qcow2"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.qcow2"
    "$QEMU_IMG" check -q "$BENCH_DIR/vdisk.qcow2" || { VERIFIED="check failed"; FAILED=1; }
    record "convert raw -> qcow2"
}

row_convert_qcow2_to_raw() {
    # Both tools read the qcow2 qemu-img made in the previous row.
    local in="$BENCH_DIR/qemu.qcow2"
    [[ -f $in ]] || "$QEMU_IMG" convert -f raw -O qcow2 "$SRC" "$in"
    measure "$BENCH_DIR/vdisk.raw" "$VDISK" convert -f qcow2 -O raw "$in" "$BENCH_DIR/vdisk.raw"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu.raw" "$QEMU_IMG" convert -f qcow2 -O raw "$in" "$BENCH_DIR/qemu.raw"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.raw"
    record "convert qcow2 -> raw"
}

# size_ratio A B: file size of A over that of B (compressed outputs: vdisk over qemu-img).
size_ratio() {
    awk -v a="$(stat -c %s "$1")" -v b="$(stat -c %s "$2")" 'BEGIN { printf "%.3f", a / b }'
}

# compressed_row TYPE: raw -> qcow2 with -c and compression_type=TYPE; the output column
# adds vdisk's output size over qemu-img's.
compressed_row() {
    local ty=$1 v="$BENCH_DIR/vdisk-$1.qcow2" q="$BENCH_DIR/qemu-$1.qcow2"
    measure "$v" "$VDISK" convert -c -f raw -O qcow2 -o compression_type="$ty" "$SRC" "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$q" "$QEMU_IMG" convert -c -f raw -O qcow2 -o compression_type="$ty" "$SRC" "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$v"
    "$QEMU_IMG" check -q "$v" || { VERIFIED="check failed"; FAILED=1; }
    VERIFIED="$VERIFIED, size x$(size_ratio "$v" "$q")"
    record "convert raw -> qcow2 -c $ty"
}

row_convert_raw_to_qcow2_zlib() { compressed_row zlib; }
row_convert_raw_to_qcow2_zstd() { compressed_row zstd; }

row_convert_raw_to_qcow2_zlib_vs_W() {
    # vdisk's default against qemu-img's fastest compressed convert (8 coroutines,
    # out-of-order writes).
    local v="$BENCH_DIR/vdisk-zlib.qcow2" q="$BENCH_DIR/qemu-zlib-W.qcow2"
    measure "$v" "$VDISK" convert -c -f raw -O qcow2 "$SRC" "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$q" "$QEMU_IMG" convert -c -m 8 -W -f raw -O qcow2 "$SRC" "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$v"
    VERIFIED="$VERIFIED, size x$(size_ratio "$v" "$q")"
    record "  ... vs qemu-img -m 8 -W"
}

# compressed_to_raw_row TYPE: both tools read the compressed qcow2 qemu-img made above.
compressed_to_raw_row() {
    local in="$BENCH_DIR/qemu-$1.qcow2"
    [[ -f $in ]] || "$QEMU_IMG" convert -c -f raw -O qcow2 -o compression_type="$1" "$SRC" "$in"
    measure "$BENCH_DIR/vdisk.raw" "$VDISK" convert -f qcow2 -O raw "$in" "$BENCH_DIR/vdisk.raw"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu.raw" "$QEMU_IMG" convert -f qcow2 -O raw "$in" "$BENCH_DIR/qemu.raw"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.raw"
    record "convert qcow2 ($1) -> raw"
}

row_convert_qcow2_zlib_to_raw() { compressed_to_raw_row zlib; }
row_convert_qcow2_zstd_to_raw() { compressed_to_raw_row zstd; }

for row in "${ROWS[@]}"; do
    if [[ -n $FILTER && $row != *"$FILTER"* ]]; then continue; fi
    echo "== $row"
    "row_$row"
done

echo
printf '%-30s %9s %11s %7s %10s %12s  %s\n' operation "vdisk s" "qemu-img s" ratio "vdisk MiB" "qemu-img MiB" output
printf '%s\n' "${RESULTS[@]}"
echo "(seconds: best of $RUNS wall-clock runs; ratio: vdisk/qemu-img, below 1 means vdisk is faster; MiB: peak RSS)"
exit "$FAILED"
