package main

import (
	"strings"
	"testing"

	xpipev1 "example.com/xpipe-client/gen/xpipe/v1"
)

// The checks describe makes: what the pipeline must produce passes, and each kind of
// mismatch is named. (The RPCs themselves are tested against a real cluster by
// tests/integration/test_client_go.py.)

func result(state xpipev1.TaskState, value commandResult, exitCode *int32) readResult {
	task := &xpipev1.TaskResult{State: state, Result: &xpipev1.Payload{Codec: xpipev1.Codec_CODEC_JSON}}
	if exitCode != nil {
		task.Error = &xpipev1.TaskError{ExitCode: exitCode}
	}
	return readResult{task: task, value: value}
}

func TestDescribeAcceptsWhatThePipelineProduces(t *testing.T) {
	three := int32(3)
	line, problem := describe("fail", result(xpipev1.TaskState_FAILED,
		commandResult{Stdout: "partial output\n", Stderr: "disk full\n", ExitCode: 3}, &three))
	if problem != "" || line != "task fail FAILED exit_code=3 stderr=disk full stdout=partial output" {
		t.Fatalf("line %q, problem %q", line, problem)
	}
	line, problem = describe("greet", result(xpipev1.TaskState_SUCCEEDED, commandResult{Stdout: "hello from go\n"}, nil))
	if problem != "" || line != "task greet SUCCEEDED stdout=hello from go" {
		t.Fatalf("line %q, problem %q", line, problem)
	}
}

func TestDescribeNamesEachMismatch(t *testing.T) {
	two := int32(2)
	cases := []struct {
		task string
		got  readResult
		want []string
	}{
		{"greet", result(xpipev1.TaskState_FAILED, commandResult{Stdout: "hi\n"}, nil),
			[]string{"task greet:", "state FAILED, expected SUCCEEDED", `stdout "hi\n", expected "hello from go"`}},
		{"blob", result(xpipev1.TaskState_SUCCEEDED, commandResult{Stdout: "short"}, nil),
			[]string{"came inline, expected it by artifact reference", "stdout is 5 bytes, expected 1048576"}},
		{"json20k", result(xpipev1.TaskState_SUCCEEDED, commandResult{Stdout: `{"rows": [1, 2]}`}, nil),
			[]string{"2 rows, expected 640"}},
		{"fail", result(xpipev1.TaskState_FAILED, commandResult{Stderr: "oops"}, &two),
			[]string{"TaskError.exit_code 2, expected 3", `stderr "oops", expected "disk full"`}},
		{"fail", result(xpipev1.TaskState_FAILED, commandResult{Stderr: "disk full"}, nil),
			[]string{"TaskError.exit_code unset, expected 3"}},
	}
	for _, c := range cases {
		_, problem := describe(c.task, c.got)
		for _, want := range c.want {
			if !strings.Contains(problem, want) {
				t.Errorf("%s: problem %q does not say %q", c.task, problem, want)
			}
		}
	}
}
