#!/usr/bin/env node
// An xpipe client in plain JavaScript, built only from proto/xpipe/v1 (loaded at run time)
// and @grpc/grpc-js: no generated code, no Python, no native modules.
//
// It submits a small DAG of command tasks, follows it with WatchRun, then reads every task's
// result the way a service in another language would: small results inline, a 1 MiB result
// by reference through GetArtifact (hash-checked here), a 20 KiB JSON result as identity
// bytes (this client lists no zstd), and a failed command's exit code, stdout and stderr.
// See README.md for how each step maps to the API (docs/api.md).
//
// Usage: node client.mjs [--target HOST:PORT] [--proto-dir DIR] [--timeout-s SECONDS]
// Exit 0 when every check held; 1 with the reasons on stderr otherwise.

import { createHash } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const LANG = 'node';

// The contract every client example follows (its README lists it).
const INLINE_MAX_BYTES = 65536; // results bigger than this come by reference (GetArtifact)
const BLOB_STDOUT_LIMIT_BYTES = 2 * 1024 * 1024; // keep all of blob's 1 MiB stdout
const BLOB_BYTES = 1024 * 1024;
const JSON_ROWS = 640;
const FAIL_EXIT_CODE = 3;
const BLOB_PY =
  "import hashlib,sys; b=b''.join(hashlib.sha256(str(i).encode()).hexdigest().encode() " +
  'for i in range(16384)); sys.stdout.write(b.decode())';
const JSON_PY =
  'import json; print(json.dumps({"rows": [{"i": i, "name": "row-%05d" % i} for i in range(640)]}))';
const TASK_ORDER = ['greet', 'blob', 'json20k', 'fail'];

/** A failure this program reports as one line on stderr, then exits 1. */
class ClientError extends Error {}

function parseCommandLine() {
  const { values } = parseArgs({
    options: {
      target: { type: 'string', default: process.env.XPIPE_ADDRESS || '127.0.0.1:50051' },
      'proto-dir': { type: 'string', default: path.resolve(HERE, '../../../proto') },
      'timeout-s': { type: 'string', default: '30' },
    },
  });
  const timeoutS = Number(values['timeout-s']);
  if (!(timeoutS > 0)) {
    throw new ClientError(`--timeout-s must be a positive number of seconds, got ${values['timeout-s']}`);
  }
  return { target: values.target, protoDir: values['proto-dir'], timeoutS };
}

/** Loads the PipelineService client class from the .proto files (no code generation). */
function loadPipelineService(protoDir) {
  const file = 'xpipe/v1/pipeline.proto'; // its imports (common.proto, worker.proto) come along
  let definition;
  try {
    definition = protoLoader.loadSync([file], {
      includeDirs: [protoDir],
      keepCase: true, // field names as in the .proto (run_id, not runId)
      longs: Number, // uint64 sizes here stay far below 2^53
      enums: String, // enum values by name, as printed ("SUCCEEDED")
      defaults: true,
      oneofs: true, // a proto3 `optional` field's presence shows as `_<field>`
    });
  } catch (err) {
    throw new ClientError(`cannot load ${file} from ${protoDir}: ${err.message}`);
  }
  return grpc.loadPackageDefinition(definition).xpipe.v1.PipelineService;
}

function commandTask(name, argv, { dependsOn = [], stdoutLimitBytes = 0 } = {}) {
  return {
    name,
    depends_on: dependsOn,
    command: { argv, stdout_limit_bytes: stdoutLimitBytes },
  };
}

function pipelineSpec() {
  return {
    name: `polyglot-${LANG}`,
    tasks: [
      commandTask('greet', ['sh', '-c', `echo hello from ${LANG}`]),
      commandTask('blob', ['python3', '-c', BLOB_PY], {
        dependsOn: ['greet'],
        stdoutLimitBytes: BLOB_STDOUT_LIMIT_BYTES,
      }),
      commandTask('json20k', ['python3', '-c', JSON_PY], { dependsOn: ['greet'] }),
      // retry unset: one attempt, so the run ends RUN_FAILED.
      commandTask('fail', ['sh', '-c', "echo partial output; echo 'disk full' >&2; exit 3"], {
        dependsOn: ['greet'],
      }),
    ],
  };
}

function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) ?? String(code);
}

/** Wraps a gRPC error so the message names the call, the status code and its details. */
function rpcError(call, err) {
  if (err && typeof err.code === 'number') {
    return new ClientError(`${call} failed: ${statusName(err.code)}: ${err.details || err.message}`);
  }
  return err;
}

function unary(client, method, request, call, deadline) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (err, response) => {
      if (err) reject(rpcError(call, err));
      else resolve(response);
    });
  });
}

/**
 * Submits the pipeline and follows it in one WatchRun stream (its `submit` field), printing
 * `event <task> <STATE>` for each task state change. Returns the run id and its final state.
 */
async function submitAndWatch(client, spec, deadline) {
  const stream = client.WatchRun({ submit: { pipeline: spec } }, { deadline });
  const lastState = new Map();
  let summary = null;
  try {
    for await (const event of stream) {
      summary = event.summary ?? summary;
      for (const task of event.changed) {
        if (lastState.get(task.name) !== task.state) {
          lastState.set(task.name, task.state);
          console.log(`event ${task.name} ${task.state}`);
        }
      }
    }
  } catch (err) {
    throw rpcError('WatchRun', err);
  }
  if (!summary) throw new ClientError('WatchRun ended without a single event');
  return { runId: summary.run_id, state: summary.state };
}

/**
 * Reads an artifact's bytes with GetArtifact: chunks in order, their offsets contiguous, the
 * total and the SHA-256 checked against what the first chunk announced.
 */
async function readArtifact(client, runId, task, ref, deadline) {
  const call = `GetArtifact(${task})`;
  const stream = client.GetArtifact({ run_id: runId, task, ref }, { deadline });
  const chunks = [];
  let first = null;
  let received = 0;
  try {
    for await (const chunk of stream) {
      first ??= chunk;
      if (chunk.offset !== received) {
        throw new ClientError(`${call}: chunk at offset ${chunk.offset}, expected ${received}`);
      }
      chunks.push(chunk.data);
      received += chunk.data.length;
    }
  } catch (err) {
    throw rpcError(call, err);
  }
  if (!first) throw new ClientError(`${call}: the stream had no chunk`);
  const data = Buffer.concat(chunks, received);
  if (received !== first.total_bytes) {
    throw new ClientError(`${call}: got ${received} bytes, the first chunk announced ${first.total_bytes}`);
  }
  const sha256 = createHash('sha256').update(data).digest('hex');
  if (sha256 !== first.sha256) {
    throw new ClientError(`${call}: sha256 of the bytes is ${sha256}, the first chunk announced ${first.sha256}`);
  }
  return { data, compression: first.compression || 'identity', codec: first.codec };
}

/**
 * Fetches a task's result (GetTaskResult, identity bytes only) and decodes its JSON payload.
 * Returns the TaskResult, the decoded value (null when it has no payload) and how it came.
 */
async function readResult(client, runId, task, deadline) {
  const result = await unary(
    client,
    'GetTaskResult',
    { run_id: runId, task, inline_max_bytes: INLINE_MAX_BYTES },
    `GetTaskResult(${task})`,
    deadline,
  );
  const payload = result.result;
  const how = { artifact: false, zstd: false };
  if (!payload || (!payload.artifact_ref && payload.data.length === 0)) {
    return { result, value: null, how };
  }
  let data = payload.data;
  let codec = payload.codec;
  if (payload.artifact_ref) {
    how.artifact = true;
    const artifact = await readArtifact(client, runId, task, payload.artifact_ref, deadline);
    ({ data, codec } = artifact);
    how.zstd = artifact.compression !== 'identity';
  } else {
    how.zstd = payload.zstd;
  }
  if (how.zstd) {
    throw new ClientError(`task ${task}: result came zstd-compressed although this client does not accept zstd`);
  }
  if (codec !== 'CODEC_JSON') {
    throw new ClientError(`task ${task}: result codec is ${codec}, expected CODEC_JSON`);
  }
  return { result, value: parseJson(data.toString('utf8'), `task ${task}: the result`), how };
}

function parseJson(text, what) {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ClientError(`${what} is not JSON: ${err.message.replace(/\s+/g, ' ')}`); // one line
  }
}

const sha256Hex = (text) => createHash('sha256').update(text, 'utf8').digest('hex');
const chomp = (text) => text.replace(/\n$/, '');

/** Prints each task's line and returns the contract checks that did not hold. */
function reportTask(task, { result, value, how }) {
  const problems = [];
  const expectState = task === 'fail' ? 'FAILED' : 'SUCCEEDED';
  if (result.state !== expectState) problems.push(`task ${task}: state ${result.state}, expected ${expectState}`);
  if (value === null) {
    problems.push(`task ${task}: the result has no payload (a command's {stdout, stderr, exit_code})`);
    console.log(`task ${task} ${result.state} result=none`);
    return problems;
  }
  const stdout = value.stdout ?? '';
  if (task === 'greet') {
    const want = `hello from ${LANG}`;
    console.log(`task greet ${result.state} stdout=${chomp(stdout)}`);
    if (chomp(stdout) !== want) problems.push(`task greet: stdout ${JSON.stringify(stdout)}, expected ${JSON.stringify(want)}`);
  } else if (task === 'blob') {
    const bytes = Buffer.byteLength(stdout, 'utf8');
    console.log(`task blob ${result.state} artifact=${how.artifact ? 'yes' : 'no'} bytes=${bytes} sha256=${sha256Hex(stdout)}`);
    if (!how.artifact) problems.push('task blob: the result came inline, expected it by artifact reference');
    if (bytes !== BLOB_BYTES) problems.push(`task blob: stdout is ${bytes} bytes, expected ${BLOB_BYTES}`);
  } else if (task === 'json20k') {
    const rows = parseJson(stdout, 'task json20k: stdout').rows?.length;
    console.log(`task json20k ${result.state} zstd=${how.zstd ? 'yes' : 'no'} rows=${rows} bytes=${Buffer.byteLength(stdout, 'utf8')}`);
    if (rows !== JSON_ROWS) problems.push(`task json20k: ${rows} rows, expected ${JSON_ROWS}`);
  } else if (task === 'fail') {
    const error = result.error;
    // exit_code is a proto3 `optional`: absent (not 0) when the server did not set it.
    const exitCode = error && error._exit_code === 'exit_code' ? error.exit_code : 'none';
    const stderr = (value.stderr ?? '').trim();
    console.log(`task fail ${result.state} exit_code=${exitCode} stderr=${stderr} stdout=${stdout.trim()}`);
    if (exitCode !== FAIL_EXIT_CODE) problems.push(`task fail: TaskError.exit_code is ${exitCode}, expected ${FAIL_EXIT_CODE}`);
    if (stderr !== 'disk full') problems.push(`task fail: stderr ${JSON.stringify(stderr)}, expected "disk full"`);
  }
  return problems;
}

async function main() {
  const { target, protoDir, timeoutS } = parseCommandLine();
  const PipelineService = loadPipelineService(protoDir);
  const client = new PipelineService(target, grpc.credentials.createInsecure());
  const deadline = Date.now() + timeoutS * 1000;
  try {
    const { runId, state } = await submitAndWatch(client, pipelineSpec(), deadline);
    const problems = [];
    for (const task of TASK_ORDER) {
      try {
        problems.push(...reportTask(task, await readResult(client, runId, task, deadline)));
      } catch (err) {
        if (!(err instanceof ClientError)) throw err;
        console.log(`task ${task} unreadable`); // why: on stderr with the other problems
        problems.push(err.message);
      }
    }
    console.log(`run ${runId} ${state}`);
    if (state !== 'RUN_FAILED') problems.push(`run ${runId}: state ${state}, expected RUN_FAILED`);
    return problems;
  } finally {
    client.close();
  }
}

try {
  const problems = await main();
  for (const problem of problems) console.error(`error: ${problem}`);
  process.exitCode = problems.length ? 1 : 0;
} catch (err) {
  console.error(`error: ${err instanceof ClientError ? err.message : err.stack || err}`);
  process.exitCode = 1;
}
