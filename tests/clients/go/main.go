// grpc-go, with default dial options, against a real trainerd (run by tests/e2e/clients.rs): stubs
// generated from proto/trainerd.proto by protoc-gen-go and protoc-gen-go-grpc, as a Go user would
// make them; over the unix socket (grpc-go's unix: resolver) and over TCP with the bearer token.
//
// Each target: DaemonInfo, SubmitJob, WatchJob to the end, GetJob, CancelJob and one refused call
// with its code.
//
//	goclient unix:///path/to/trainerd.sock 127.0.0.1:PORT TOKEN_FILE
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "trainerd/pb"
)

// bearer sends the token with every call; trainerd's TCP listener here is plain (a loopback test).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func last(stream pb.Trainerd_WatchJobClient) *pb.Job {
	var job *pb.Job
	first := true
	for {
		update, err := stream.Recv()
		if err == io.EOF {
			return job
		}
		if err != nil {
			fail("watch: %v", err)
		}
		if first && update.Kind != "snapshot" {
			fail("the first update is %q, not a snapshot", update.Kind)
		}
		first = false
		job = update.Job
	}
}

func check(target, tag string, opts ...grpc.DialOption) {
	opts = append(opts, grpc.WithInsecure())
	conn, err := grpc.Dial(target, opts...)
	if err != nil {
		fail("%s: dial: %v", target, err)
	}
	defer conn.Close()
	client := pb.NewTrainerdClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	info, err := client.DaemonInfo(ctx, &pb.DaemonInfoRequest{})
	if err != nil || !strings.HasPrefix(info.ApiVersion, "1.") {
		fail("%s: DaemonInfo: %v %v", target, info, err)
	}
	short := &pb.SubmitJobRequest{Name: "go-short-" + tag, Command: []string{"/bin/sh", "-c", "echo " + tag}, Workdir: "/tmp"}
	submitted, err := client.SubmitJob(ctx, short)
	if err != nil {
		fail("%s: SubmitJob: %v", target, err)
	}
	id := submitted.Job.Id
	stream, err := client.WatchJob(ctx, &pb.WatchJobRequest{Id: id})
	if err != nil {
		fail("%s: WatchJob: %v", target, err)
	}
	if job := last(stream); job.State != pb.JobState_JOB_STATE_COMPLETED {
		fail("%s: the watch ended with %v", target, job)
	}
	got, err := client.GetJob(ctx, &pb.GetJobRequest{Id: id})
	if err != nil || got.State != pb.JobState_JOB_STATE_COMPLETED || got.Name != "go-short-"+tag {
		fail("%s: GetJob: %v %v", target, got, err)
	}
	long := &pb.SubmitJobRequest{Name: "go-long-" + tag, Command: []string{"/bin/sleep", "300"}, Workdir: "/tmp"}
	running, err := client.SubmitJob(ctx, long)
	if err != nil {
		fail("%s: SubmitJob: %v", target, err)
	}
	if _, err := client.CancelJob(ctx, &pb.CancelJobRequest{Id: running.Job.Id}); err != nil {
		fail("%s: CancelJob: %v", target, err)
	}
	stream, err = client.WatchJob(ctx, &pb.WatchJobRequest{Id: running.Job.Id})
	if err != nil {
		fail("%s: WatchJob: %v", target, err)
	}
	if job := last(stream); job.State != pb.JobState_JOB_STATE_CANCELLED {
		fail("%s: not cancelled: %v", target, job)
	}
	_, err = client.GetJob(ctx, &pb.GetJobRequest{Id: "fffffffffff0"})
	if s, _ := status.FromError(err); s.Code() != codes.NotFound || !strings.Contains(s.Message(), "fffffffffff0") {
		fail("%s: an unknown job: %v", target, err)
	}
}

func main() {
	if len(os.Args) != 4 {
		fail("usage: goclient unix:///SOCKET HOST:PORT TOKEN_FILE")
	}
	token, err := os.ReadFile(os.Args[3])
	if err != nil {
		fail("token: %v", err)
	}
	check(os.Args[1], "unix")
	check(os.Args[2], "tcp", grpc.WithPerRPCCredentials(bearer(strings.TrimSpace(string(token)))))
	fmt.Println("grpc-go: all calls as expected")
}
