package xpipe.examples;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import xpipe.v1.Common.CommandCall;
import xpipe.v1.Common.Codec;
import xpipe.v1.Common.Payload;
import xpipe.v1.Common.PipelineSpec;
import xpipe.v1.Common.RunState;
import xpipe.v1.Common.TaskSpec;
import xpipe.v1.Common.TaskState;
import xpipe.v1.Pipeline.ArtifactChunk;
import xpipe.v1.Pipeline.GetArtifactRequest;
import xpipe.v1.Pipeline.GetTaskResultRequest;
import xpipe.v1.Pipeline.RunEvent;
import xpipe.v1.Pipeline.SubmitPipelineRequest;
import xpipe.v1.Pipeline.TaskInfo;
import xpipe.v1.Pipeline.TaskResult;
import xpipe.v1.Pipeline.WatchRunRequest;
import xpipe.v1.PipelineServiceGrpc;
import xpipe.v1.PipelineServiceGrpc.PipelineServiceBlockingStub;

/**
 * An xpipe client in Java that uses nothing but the protos and grpc-java.
 *
 * <p>It shows what a service in another language needs: submit a DAG of command tasks, follow
 * it with WatchRun, then read every task's result without zstd (the JDK has none), a 1 MiB
 * result through GetArtifact, and a failed command's exit code and stderr. It checks what it
 * read and exits 1 naming the first thing that was wrong.
 *
 * <p>Usage: {@code java -jar target/xpipe-client-java.jar [--target HOST:PORT]}
 */
public final class PolyglotClient {

  private static final String LANG = "java";
  private static final String DEFAULT_TARGET = "127.0.0.1:50051";

  /** Prints exactly 1 MiB (16,384 x 64 hex chars) of incompressible text, no newline. */
  private static final String BLOB_PY =
      "import hashlib,sys; b=b''.join(hashlib.sha256(str(i).encode()).hexdigest().encode()"
          + " for i in range(16384)); sys.stdout.write(b.decode())";
  private static final long BLOB_BYTES = 1_048_576;
  /** blob's stdout is its data: keep all of it (the default keeps the last 64 KiB). */
  private static final long BLOB_STDOUT_LIMIT_BYTES = 2_097_152;

  /** Prints a ~20 KiB JSON document: big enough that the worker zstd-compresses it. */
  private static final String JSON_PY =
      "import json; print(json.dumps({\"rows\": [{\"i\": i, \"name\": \"row-%05d\" % i}"
          + " for i in range(640)]}))";
  private static final int JSON_ROWS = 640;

  /** Results larger than this come by reference and are read with GetArtifact. */
  private static final long INLINE_MAX_BYTES = 65_536;

  private static final long WATCH_DEADLINE_S = 60;
  private static final long CALL_DEADLINE_S = 15;

  private PolyglotClient() {}

  /** A result that is not what the run should have produced; the message names it. */
  static final class CheckFailed extends Exception {
    CheckFailed(String message) {
      super(message);
    }
  }

  /** A gRPC call that failed: which RPC, and the status the server (or channel) gave. */
  static final class RpcFailed extends Exception {
    RpcFailed(String rpc, Status status) {
      super(rpc + " failed: " + status.getCode() + ": " + status.getDescription());
    }
  }

  /** A command task's result payload as the worker encodes it (codec JSON). */
  record CommandResult(String stdout, String stderr, long exitCode) {}

  /** A result payload's decoded bytes, and how they travelled. */
  record Fetched(byte[] bytes, boolean viaArtifact, boolean zstd) {}

  public static void main(String[] args) {
    String target;
    try {
      target = parseTarget(args);
    } catch (IllegalArgumentException e) {
      System.err.println("xpipe-client-java: " + e.getMessage());
      System.err.println("usage: xpipe-client-java [--target HOST:PORT]");
      System.exit(1);
      return;
    }
    if (target == null) { // --help
      System.out.println("usage: xpipe-client-java [--target HOST:PORT]"
          + "  (default $XPIPE_ADDRESS, else " + DEFAULT_TARGET + ")");
      return;
    }
    ManagedChannel channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
    int exitCode = 1;
    try {
      List<String> problems = run(PipelineServiceGrpc.newBlockingStub(channel));
      for (String problem : problems) {
        System.err.println("xpipe-client-java: check failed: " + problem);
      }
      exitCode = problems.isEmpty() ? 0 : 1;
    } catch (RpcFailed e) {
      System.err.println("xpipe-client-java: " + e.getMessage());
    } finally {
      channel.shutdownNow();
      try {
        channel.awaitTermination(5, TimeUnit.SECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
    System.out.flush();
    System.exit(exitCode);
  }

  /** Returns the target from --target, else $XPIPE_ADDRESS, else the default; null for --help. */
  static String parseTarget(String[] args) {
    String target = System.getenv().getOrDefault("XPIPE_ADDRESS", "");
    for (int i = 0; i < args.length; i++) {
      String arg = args[i];
      if (arg.equals("-h") || arg.equals("--help")) {
        return null;
      } else if (arg.equals("--target")) {
        if (i + 1 >= args.length) {
          throw new IllegalArgumentException("--target needs a value (HOST:PORT)");
        }
        target = args[++i];
      } else if (arg.startsWith("--target=")) {
        target = arg.substring("--target=".length());
      } else {
        throw new IllegalArgumentException("unknown argument: " + arg);
      }
    }
    return target.isEmpty() ? DEFAULT_TARGET : target;
  }

  /** The pipeline of the contract: greet, then blob, json20k and fail, each after greet. */
  static PipelineSpec pipeline() {
    return PipelineSpec.newBuilder()
        .setName("polyglot-" + LANG)
        .addTasks(command("greet", List.of(), 0, "sh", "-c", "echo hello from " + LANG))
        .addTasks(command("blob", List.of("greet"), BLOB_STDOUT_LIMIT_BYTES,
            "python3", "-c", BLOB_PY))
        .addTasks(command("json20k", List.of("greet"), 0, "python3", "-c", JSON_PY))
        // retry left unset: one attempt, so the run ends RUN_FAILED.
        .addTasks(command("fail", List.of("greet"), 0,
            "sh", "-c", "echo partial output; echo 'disk full' >&2; exit 3"))
        .build();
  }

  /** A COMMAND task; stdoutLimitBytes 0 keeps the default tail (64 KiB) of its stdout. */
  private static TaskSpec command(
      String name, List<String> dependsOn, long stdoutLimitBytes, String... argv) {
    return TaskSpec.newBuilder()
        .setName(name)
        .addAllDependsOn(dependsOn)
        .setCommand(CommandCall.newBuilder()
            .addAllArgv(List.of(argv))
            .setStdoutLimitBytes(stdoutLimitBytes))
        .build();
  }

  /** Submits and follows the run, then reads and checks each result; returns the problems. */
  static List<String> run(PipelineServiceBlockingStub stub) throws RpcFailed {
    // WatchRun with `submit` submits and watches in one round trip; the stream ends when the
    // run does. The first event carries every task; later ones only the tasks that changed.
    WatchRunRequest watch = WatchRunRequest.newBuilder()
        .setSubmit(SubmitPipelineRequest.newBuilder().setPipeline(pipeline()))
        .build();
    String runId = "";
    RunState runState = RunState.RUN_STATE_UNSPECIFIED;
    Iterator<RunEvent> events =
        stub.withDeadlineAfter(WATCH_DEADLINE_S, TimeUnit.SECONDS).watchRun(watch);
    while (call("WatchRun", events::hasNext)) {
      RunEvent event = events.next();
      runId = event.getSummary().getRunId();
      runState = event.getSummary().getState();
      for (TaskInfo task : event.getChangedList()) {
        System.out.println("event " + task.getName() + " " + task.getState().name());
      }
    }

    List<String> problems = new ArrayList<>();
    for (String task : List.of("greet", "blob", "json20k", "fail")) {
      try {
        System.out.println(describe(stub, runId, task));
      } catch (CheckFailed e) {
        problems.add(task + ": " + e.getMessage());
      }
    }
    System.out.println("run " + runId + " " + runState.name());
    if (runState != RunState.RUN_FAILED) {
      problems.add("the run ended " + runState.name() + ", expected RUN_FAILED (fail exits 3)");
    }
    return problems;
  }

  /** Reads one task's result and returns its report line, after checking the contract. */
  static String describe(PipelineServiceBlockingStub stub, String runId, String task)
      throws RpcFailed, CheckFailed {
    // No accept_compression: identity only, so the coordinator must decompress zstd results.
    GetTaskResultRequest request = GetTaskResultRequest.newBuilder()
        .setRunId(runId)
        .setTask(task)
        .setInlineMaxBytes(INLINE_MAX_BYTES)
        .build();
    TaskResult result = call("GetTaskResult",
        () -> stub.withDeadlineAfter(CALL_DEADLINE_S, TimeUnit.SECONDS).getTaskResult(request));
    String state = result.getState().name();
    TaskState expected = task.equals("fail") ? TaskState.FAILED : TaskState.SUCCEEDED;
    if (result.getState() != expected) {
      throw new CheckFailed("state " + state + ", expected " + expected.name()
          + (result.hasError() ? " (error: " + result.getError().getMessage() + ")" : ""));
    }
    if (!result.hasResult()) {
      throw new CheckFailed("state " + state + " but the result has no payload"
          + (task.equals("fail") ? " (a failed command's result was not kept)" : ""));
    }
    Fetched fetched = fetch(stub, runId, task, result.getResult());
    CommandResult out = parseCommandResult(fetched.bytes());
    switch (task) {
      case "greet": {
        String stdout = stripNewline(out.stdout());
        if (!stdout.equals("hello from " + LANG)) {
          throw new CheckFailed(
              "stdout " + quote(stdout) + ", expected \"hello from " + LANG + "\"");
        }
        return "task greet " + state + " stdout=" + stdout;
      }
      case "blob": {
        byte[] stdout = out.stdout().getBytes(StandardCharsets.UTF_8);
        if (!fetched.viaArtifact()) {
          throw new CheckFailed("the 1 MiB result came inline, expected an artifact_ref");
        }
        if (stdout.length != BLOB_BYTES) {
          throw new CheckFailed("stdout has " + stdout.length + " bytes, expected " + BLOB_BYTES);
        }
        return "task blob " + state + " artifact=yes bytes=" + stdout.length
            + " sha256=" + sha256Hex(stdout);
      }
      case "json20k": {
        byte[] stdout = out.stdout().getBytes(StandardCharsets.UTF_8);
        int rows = countRows(out.stdout());
        if (rows != JSON_ROWS) {
          throw new CheckFailed("stdout has " + rows + " rows, expected " + JSON_ROWS);
        }
        return "task json20k " + state + " zstd=" + (fetched.zstd() ? "yes" : "no")
            + " rows=" + rows + " bytes=" + stdout.length;
      }
      case "fail": {
        if (!result.hasError() || !result.getError().hasExitCode()) {
          throw new CheckFailed("TaskResult.error.exit_code is not set");
        }
        int exitCode = result.getError().getExitCode();
        String stderr = out.stderr().strip();
        if (exitCode != 3) {
          throw new CheckFailed("exit_code " + exitCode + ", expected 3");
        }
        if (!stderr.equals("disk full")) {
          throw new CheckFailed("stderr " + quote(stderr) + ", expected \"disk full\"");
        }
        return "task fail " + state + " exit_code=" + exitCode + " stderr=" + stderr
            + " stdout=" + out.stdout().strip();
      }
      default:
        throw new IllegalArgumentException("no check for task " + task);
    }
  }

  /** Returns a payload's bytes: inline, or read with GetArtifact when it travels by ref. */
  static Fetched fetch(PipelineServiceBlockingStub stub, String runId, String task, Payload payload)
      throws RpcFailed, CheckFailed {
    if (!payload.getArtifactRef().isEmpty()) {
      return new Fetched(readArtifact(stub, runId, task, payload.getArtifactRef()), true, false);
    }
    if (payload.getZstd()) {
      // We listed no compression, so the coordinator owed us identity bytes.
      throw new CheckFailed(
          "result came zstd-compressed although the client accepts only identity");
    }
    if (payload.getCodec() != Codec.CODEC_JSON) {
      throw new CheckFailed("result codec " + payload.getCodec().name() + ", expected CODEC_JSON");
    }
    return new Fetched(payload.getData().toByteArray(), false, false);
  }

  /**
   * Streams an artifact's bytes with GetArtifact and checks them: chunks in order, their sum
   * equal to total_bytes, and their SHA-256 (computed here) equal to the first chunk's sha256.
   */
  static byte[] readArtifact(
      PipelineServiceBlockingStub stub, String runId, String task, String ref)
      throws RpcFailed, CheckFailed {
    GetArtifactRequest request = GetArtifactRequest.newBuilder()
        .setRunId(runId)
        .setTask(task)
        .setRef(ref)
        .build();
    Iterator<ArtifactChunk> chunks =
        stub.withDeadlineAfter(CALL_DEADLINE_S, TimeUnit.SECONDS).getArtifact(request);
    MessageDigest digest = newSha256();
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    ArtifactChunk first = null;
    while (call("GetArtifact", chunks::hasNext)) {
      ArtifactChunk chunk = chunks.next();
      if (first == null) {
        first = chunk;
      }
      if (chunk.getOffset() != bytes.size()) {
        throw new CheckFailed("GetArtifact sent a chunk at offset " + chunk.getOffset()
            + ", expected " + bytes.size());
      }
      byte[] data = chunk.getData().toByteArray();
      digest.update(data);
      bytes.write(data, 0, data.length);
    }
    if (first == null) {
      throw new CheckFailed("GetArtifact sent no chunks for ref " + ref);
    }
    if (!first.getCompression().isEmpty() && !first.getCompression().equals("identity")) {
      throw new CheckFailed("GetArtifact sent compression " + quote(first.getCompression())
          + " although the client accepts only identity");
    }
    if (first.getCodec() != Codec.CODEC_JSON) {
      throw new CheckFailed("artifact codec " + first.getCodec().name() + ", expected CODEC_JSON");
    }
    if (bytes.size() != first.getTotalBytes()) {
      throw new CheckFailed("GetArtifact sent " + bytes.size() + " bytes, total_bytes said "
          + first.getTotalBytes());
    }
    String sha256 = HexFormat.of().formatHex(digest.digest());
    if (!sha256.equals(first.getSha256())) {
      throw new CheckFailed("artifact bytes hash to " + sha256 + ", the first chunk said "
          + quote(first.getSha256()));
    }
    return bytes.toByteArray();
  }

  /** Parses a command's result, the JSON object {"stdout", "stderr", "exit_code"}. */
  static CommandResult parseCommandResult(byte[] json) throws CheckFailed {
    try {
      JsonObject object = JsonParser.parseString(new String(json, StandardCharsets.UTF_8))
          .getAsJsonObject();
      return new CommandResult(
          stringField(object, "stdout"), stringField(object, "stderr"),
          object.get("exit_code").getAsLong());
    } catch (JsonParseException | IllegalStateException | NullPointerException
        | UnsupportedOperationException | NumberFormatException e) {
      throw new CheckFailed("result is not a command's JSON {stdout, stderr, exit_code}: " + e);
    }
  }

  private static String stringField(JsonObject object, String name) {
    JsonElement value = object.get(name);
    if (value == null || !value.isJsonPrimitive()) {
      throw new IllegalStateException("no string field " + name);
    }
    return value.getAsString();
  }

  private static int countRows(String json) throws CheckFailed {
    try {
      return JsonParser.parseString(json).getAsJsonObject().getAsJsonArray("rows").size();
    } catch (JsonParseException | IllegalStateException | NullPointerException
        | ClassCastException e) {
      throw new CheckFailed("stdout is not JSON with a rows array: " + e);
    }
  }

  /** Runs a gRPC call, turning its failure into an RpcFailed that names the RPC. */
  private static <T> T call(String rpc, Supplier<T> body) throws RpcFailed {
    try {
      return body.get();
    } catch (StatusRuntimeException e) {
      throw new RpcFailed(rpc, e.getStatus());
    }
  }

  private static MessageDigest newSha256() {
    try {
      return MessageDigest.getInstance("SHA-256");
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("every JDK has SHA-256", e);
    }
  }

  private static String sha256Hex(byte[] bytes) {
    return HexFormat.of().formatHex(newSha256().digest(bytes));
  }

  private static String stripNewline(String text) {
    return text.endsWith("\n") ? text.substring(0, text.length() - 1) : text;
  }

  private static String quote(String text) {
    String shown = text.length() > 80 ? text.substring(0, 80) + "..." : text;
    return "\"" + shown.replace("\n", "\\n") + "\"";
  }
}
