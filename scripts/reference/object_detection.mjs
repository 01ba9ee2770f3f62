// MB3-CenterNet run by TensorFlow.js (pure JavaScript, CPU) as its packagers run it: each image
// resized to 512×512 with tf.image.resizeBilinear, the graph model executed whole (its own tail
// decodes the 100 best centres into `tower_0/detections`: x1, y1, x2, y2, score, class), then
// tf.image.nonMaxSuppression (IoU 0.4, score above 0.2) and the boxes scaled to the image and
// clamped to it. Also the raw heads: the 20 highest heatmap scores with their NHWC indices, and
// the distances at those cells. Prints the JSON fixture.
//
// Usage: node object_detection.mjs MODEL_DIR LABELS_FILE IMAGE.png...
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { PNG } from 'pngjs';

const [modelDir, labelsFile, ...images] = process.argv.slice(2);
const labels = fs.readFileSync(labelsFile, 'utf8').trim().split('\n');
const json = JSON.parse(fs.readFileSync(path.join(modelDir, 'centernet.json')));
const weights = Buffer.concat(json.weightsManifest.flatMap((g) => g.paths).map((p) => fs.readFileSync(path.join(modelDir, p))));
await tf.setBackend('cpu');
const model = await tf.loadGraphModel({
  load: async () => ({
    modelTopology: json.modelTopology,
    format: json.format,
    signature: json.signature,
    weightSpecs: json.weightsManifest.flatMap((g) => g.weights),
    weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
  }),
});

const round = (v) => Math.round(v * 1e6) / 1e6;
const cases = {};
for (const file of images) {
  const png = PNG.sync.read(fs.readFileSync(file));
  const { width, height } = png;
  const rgb = new Float32Array(width * height * 3);
  for (let i = 0; i < width * height; i++) for (let c = 0; c < 3; c++) rgb[i * 3 + c] = png.data[i * 4 + c];
  const input = tf.image.resizeBilinear(tf.tensor4d(rgb, [1, height, width, 3]), [512, 512]);
  const [detections, heatmap, distances] = model.execute(input, ['tower_0/detections', 'tower_0/keypoints', 'tower_0/wh']);
  const rows = (await detections.array())[0];
  const keep = await (await tf.image.nonMaxSuppressionAsync(
    rows.map((r) => [r[1], r[0], r[3], r[2]]), rows.map((r) => r[4]), 100, 0.4, 0.2)).array();
  const clamp = (v, max) => Math.min(Math.max(v, 0), max);
  const objects = keep.map((k) => {
    const [x1, y1, x2, y2, score, cls] = rows[k];
    return {
      label: labels[cls],
      score: round(score),
      box: {
        xmin: round(clamp(x1 / 512 * width, width)), ymin: round(clamp(y1 / 512 * height, height)),
        xmax: round(clamp(x2 / 512 * width, width)), ymax: round(clamp(y2 / 512 * height, height)),
      },
    };
  });
  const heat = await heatmap.data();
  const wh = await distances.data();
  const top = tf.topk(tf.tensor1d(heat), 20);
  const indices = Array.from(await top.indices.data());
  const classes = heatmap.shape[3];
  cases[path.basename(file, '.png')] = {
    objects,
    heatmap_top: { indices, scores: Array.from(await top.values.data()).map(round) },
    distances_at_top: indices.flatMap((i) => Array.from(wh.slice(Math.floor(i / classes) * 4, Math.floor(i / classes) * 4 + 4)).map(round)),
  };
}
console.log(JSON.stringify({ runtime: `@tensorflow/tfjs ${tf.version.tfjs} (cpu backend)`, cases }, null, 1));
