#!/usr/bin/env bash
# Makes crates/ember-engines/tests/fixtures/vision/centernet.json (see object_detection.mjs): what
# MB3-CenterNet answers for the three test photos when TensorFlow.js runs its TF.js graph model
# itself. Run by hand when the fixture has to change; CI reads only the committed file.
#
# Needs the model in the cache (`ember models pull @hf/vladmandic/mb3-centernet`, a default) and
# Node.js; installs the pure-JavaScript @tensorflow/tfjs and pngjs into $DETREF_DIR (default
# /tmp/detref). ~15 seconds.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="${DETREF_DIR:-/tmp/detref}"
model="${EMBER_HOME:-$HOME/.cache/ember}/models/hf--vladmandic--mb3-centernet"
[ -f "$model/centernet.json" ] || { echo "$model is missing: run ember models pull --defaults" >&2; exit 1; }

mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{"type": "module"}' > "$dir/package.json"
npm install --prefix "$dir" --no-audit --no-fund --silent @tensorflow/tfjs@4.22.0 pngjs@7.0.0
cp "$here/object_detection.mjs" "$dir/"
images="$repo/crates/ember-engines/tests/fixtures/vision/images"
node "$dir/object_detection.mjs" "$model" "$repo/crates/ember-engines/src/vision/coco-labels.txt" \
  "$images/cat.png" "$images/espresso.png" "$images/astronaut.png" \
  > "$repo/crates/ember-engines/tests/fixtures/vision/centernet.json"
