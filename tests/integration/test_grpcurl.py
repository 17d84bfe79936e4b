"""The API from a generic client that has no .proto files: grpcurl, and Python's reflection client.

docs/api.md ("From any language") promises that server reflection lets a client list the
services, describe a message and submit a pipeline from JSON. The commands there run here
against a real coordinator and worker: with grpcurl itself when `make install` built it
(scripts/install_grpcurl.sh, through the Go module proxy), and in every case with grpcio's
reflection client, which builds its message classes from what the server describes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.harness import REPO_ROOT, Cluster

GRPCURL_VERSION = "v1.9.3"  # scripts/install_grpcurl.sh builds this one by default
_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
GRPCURL = shutil.which("grpcurl") or str(_CACHE / "xpipe" / "grpcurl" / GRPCURL_VERSION / "grpcurl")

# The JSON of docs/api.md: two command tasks, the second after the first.
PIPELINE_JSON = {
    "pipeline": {
        "name": "hello",
        "tasks": [
            {"name": "greet", "command": {"argv": ["sh", "-c", "echo hello"]}},
            {"name": "shout", "dependsOn": ["greet"], "command": {"argv": ["sh", "-c", "echo HELLO"]}},
        ],
    }
}
CYCLE_JSON = {
    "pipeline": {
        "name": "cycle",
        "tasks": [
            {"name": "a", "dependsOn": ["b"], "command": {"argv": ["true"]}},
            {"name": "b", "dependsOn": ["a"], "command": {"argv": ["true"]}},
        ],
    }
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(Path(tmp_path_factory.mktemp("grpcurl")), workers=1, slots=2) as c:
        yield c


# ---- grpcurl ----

needs_grpcurl = pytest.mark.skipif(
    not os.access(GRPCURL, os.X_OK),
    reason=f"no {GRPCURL}: scripts/install_grpcurl.sh builds it (needs go; `make install` runs it)",
)


def grpcurl(cluster: Cluster, *args: str, data: object = None) -> subprocess.CompletedProcess[str]:
    cmd = [GRPCURL, "-plaintext", "-max-time", "20"]
    if data is not None:
        cmd += ["-d", "@"]
    cmd += [cluster.address, *args]
    stdin = json.dumps(data) if data is not None else None
    return subprocess.run(
        cmd, check=False, input=stdin, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT
    )


def _json_stream(text: str) -> list[dict]:
    """grpcurl prints one pretty JSON object per message, one after another."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    text = text.strip()
    while pos < len(text):
        obj, pos = decoder.raw_decode(text, pos)
        out.append(obj)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


@needs_grpcurl
def test_grpcurl_lists_services_and_describes_a_message(cluster: Cluster) -> None:
    listed = grpcurl(cluster, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"xpipe.v1.PipelineService", "xpipe.v1.AdminService", "grpc.health.v1.Health"} <= services

    described = grpcurl(cluster, "describe", "xpipe.v1.CommandCall")
    assert described.returncode == 0, described.stderr
    assert "xpipe.v1.CommandCall is a message" in described.stdout
    assert "uint64 stdout_limit_bytes = 4;" in described.stdout


@needs_grpcurl
def test_grpcurl_submits_from_json_watches_and_reads_a_result(cluster: Cluster) -> None:
    submitted = grpcurl(cluster, "xpipe.v1.PipelineService/SubmitPipeline", data=PIPELINE_JSON)
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run_id"]  # grpcurl prints the .proto's field names

    watched = grpcurl(cluster, "xpipe.v1.PipelineService/WatchRun", data={"runId": run_id})
    assert watched.returncode == 0, watched.stderr
    events = _json_stream(watched.stdout)
    assert events[-1]["summary"]["state"] == "RUN_SUCCEEDED", events[-1]

    got = grpcurl(cluster, "xpipe.v1.PipelineService/GetTaskResult", data={"runId": run_id, "task": "shout"})
    assert got.returncode == 0, got.stderr
    result = json.loads(got.stdout)
    assert result["state"] == "SUCCEEDED"
    assert result["result"]["codec"] == "CODEC_JSON"
    assert json.loads(base64.b64decode(result["result"]["data"]))["stdout"] == "HELLO\n"


@needs_grpcurl
def test_grpcurl_shows_a_refused_pipeline_with_its_reason(cluster: Cluster) -> None:
    refused = grpcurl(cluster, "xpipe.v1.PipelineService/SubmitPipeline", data=CYCLE_JSON)
    assert refused.returncode != 0
    assert "InvalidArgument" in refused.stderr
    assert "cycle" in refused.stderr.lower(), refused.stderr


# ---- the same through grpcio's reflection client (no grpcurl needed) ----


class ReflectedClient:
    """Calls RPCs with message classes built from the server's reflection answers alone."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.db = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def call(self, method: str, request_json: dict, *, stream: bool = False):
        service_name, rpc = method.rsplit("/", 1)
        desc = self.pool.FindServiceByName(service_name).FindMethodByName(rpc)
        req_cls = message_factory.GetMessageClass(desc.input_type)
        resp_cls = message_factory.GetMessageClass(desc.output_type)
        request = json_format.ParseDict(request_json, req_cls())
        kind = self.channel.unary_stream if stream else self.channel.unary_unary
        stub = kind(
            f"/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        answer = stub(request, timeout=20)
        if stream:
            return [json_format.MessageToDict(m) for m in answer]
        return json_format.MessageToDict(answer)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def reflected(cluster: Cluster) -> Iterator[ReflectedClient]:
    client = ReflectedClient(cluster.address)
    try:
        yield client
    finally:
        client.close()


def test_reflection_lists_every_service_and_describes_messages(reflected: ReflectedClient) -> None:
    services = set(reflected.db.get_services())
    assert {
        "xpipe.v1.PipelineService", "xpipe.v1.AdminService", "xpipe.v1.WorkerService",
        "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    chunk = reflected.pool.FindMessageTypeByName("xpipe.v1.ArtifactChunk")
    assert [f.name for f in chunk.fields][:3] == ["data", "offset", "total_bytes"]


def test_reflection_client_submits_from_json_and_watches_to_the_end(reflected: ReflectedClient) -> None:
    run_id = reflected.call("xpipe.v1.PipelineService/SubmitPipeline", PIPELINE_JSON)["runId"]
    events = reflected.call("xpipe.v1.PipelineService/WatchRun", {"runId": run_id}, stream=True)
    assert events[-1]["summary"]["state"] == "RUN_SUCCEEDED"
    result = reflected.call("xpipe.v1.PipelineService/GetTaskResult", {"runId": run_id, "task": "greet"})
    assert json.loads(base64.b64decode(result["result"]["data"]))["stdout"] == "hello\n"


def test_reflection_client_gets_invalid_argument_for_a_cycle(reflected: ReflectedClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        reflected.call("xpipe.v1.PipelineService/SubmitPipeline", CYCLE_JSON)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cycle" in caught.value.details().lower()


def test_reflection_client_gets_a_clear_error_for_an_unknown_field(reflected: ReflectedClient) -> None:
    """A typo in the JSON is caught by the client's parser, naming the field, before any call."""
    with pytest.raises(json_format.ParseError, match="dependOn"):
        bad = {"pipeline": {"name": "x", "tasks": [{"name": "a", "dependOn": []}]}}
        reflected.call("xpipe.v1.PipelineService/SubmitPipeline", bad)
