// Run a `litewhisper export` directory with transformers.js (@huggingface/transformers) in Node.
//
//   node benchmarks/transformersjs.mjs JOB.json
//
// JOB.json: {"model": DIR, "dtype": "fp32" | "q8", "mode": "generate" | "pipeline", "items": [...],
//            "options": {generation options, e.g. "max_new_tokens": 8}}
//   mode "generate": items are {"id", "features": FILE (float32 little-endian, n_mels x 3000)}; prints the greedy
//                    token ids of model.generate (prompt included), so callers compare them with PyTorch's
//   mode "pipeline": items are {"id", "audio": FILE (float32 little-endian, 16 kHz mono)}; prints the text of
//                    pipeline('automatic-speech-recognition') and the seconds it took
// One JSON line per item on stdout: {"id", "tokens": [...]} or {"id", "text", "seconds"}.
//
// The package is found in $LITEWHISPER_TJS_DIR/node_modules (install it outside the repository:
// `npm install --prefix DIR --ignore-scripts @huggingface/transformers`), else by Node's own resolution.
// Nothing is downloaded: remote models are disabled and every file is read from DIR.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

async function loadTransformers() {
    const dir = process.env.LITEWHISPER_TJS_DIR;
    if (!dir) return import('@huggingface/transformers');
    const root = path.join(dir, 'node_modules', '@huggingface', 'transformers');
    const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
    const entry = pkg.exports?.node?.import?.default ?? './dist/transformers.node.mjs';
    return import(pathToFileURL(path.join(root, entry)).href);
}

function readFloat32(file) {
    const bytes = readFileSync(file);
    return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

function emit(record) {
    process.stdout.write(JSON.stringify(record) + '\n');
}

async function runGenerate(tjs, job) {
    const model = await tjs.AutoModelForSpeechSeq2Seq.from_pretrained(job.model, {
        dtype: job.dtype,
        local_files_only: true,
    });
    const nMels = model.config.num_mel_bins;
    for (const item of job.items) {
        const data = readFloat32(item.features);
        const inputs = new tjs.Tensor('float32', data, [1, nMels, data.length / nMels]);
        const out = await model.generate({ inputs, ...job.options });
        emit({ id: item.id, tokens: Array.from(out.tolist()[0], Number) });
    }
    await model.dispose();
}

async function runPipeline(tjs, job) {
    const asr = await tjs.pipeline('automatic-speech-recognition', job.model, {
        dtype: job.dtype,
        local_files_only: true,
    });
    for (const item of job.items) {
        const audio = readFloat32(item.audio);
        const start = performance.now();
        const out = await asr(audio, { ...job.options });
        emit({ id: item.id, text: out.text, seconds: (performance.now() - start) / 1000 });
    }
    await asr.dispose();
}

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const tjs = await loadTransformers();
tjs.env.allowRemoteModels = false;
tjs.env.allowLocalModels = true;
tjs.env.localModelPath = '';
if (job.threads) tjs.env.backends.onnx.numThreads = job.threads;
if (job.mode === 'generate') await runGenerate(tjs, job);
else if (job.mode === 'pipeline') await runPipeline(tjs, job);
else throw new Error(`unknown mode ${job.mode}: expected "generate" or "pipeline"`);
