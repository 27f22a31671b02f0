#!/usr/bin/env bash
# Rebuilds examples/models, the example model repository the README's first
# command serves, by publishing committed fixtures with `model-router publish`
# (so the manifests are exactly what publish writes: sha256, size, created).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin model-router
bin=target/debug/model-router
repo=examples/models
rm -rf "$repo"
mkdir -p "$repo"
publish() { "$bin" publish --repo "$repo" "$@" >/dev/null; echo "published $2/$4 (${*: -1})"; }
publish --name mlp --version 1 --team demo --description "4 -> 8 -> 3 MLP (ONNX format)" tests/data/models/mlp.onnx
publish --name mlp --version 2 --team demo --description "the same MLP in ORT format (zero-copy load)" tests/data/models/mlp.ort
publish --name iris --version 1 --team demo --description "scikit-learn LogisticRegression on iris, with ZipMap probabilities" tests/data/models/iris_logreg.ort
publish --name sentiment --version 1 --team demo --description "scikit-learn TF-IDF + LogisticRegression on short English sentences" tests/data/models/text_tfidf.ort
printf '{"stable": "1", "canary": "2"}\n' > "$repo/mlp/aliases.json"
"$bin" verify --repo "$repo"
