// Command postbus is a message bus that speaks plain HTTP.
//
//	postbus dev                 all-in-one on 127.0.0.1:8080, data in ./data
//	postbus broker [flags]      a broker
//	postbus namesrv [flags]     a name server
//	postbus token --scope S     mint an API token
//	postbus bench publish       load-test a broker over HTTP
//	postbus backup --to DIR     copy a data directory, also while a broker runs
//	postbus admin <noun> <verb> operate a running bus (topics, groups, dlq, ...)
//	postbus version             print the version
//
// Every flag has an environment equivalent: --flush-interval is
// POSTBUS_FLUSH_INTERVAL. A flag on the command line wins over the
// environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/postbus/postbus/cmd/postbus/bench"
)

const usage = `postbus — a message bus that speaks plain HTTP.

Usage:
  postbus <command> [flags]

Commands:
  dev        run an all-in-one bus on 127.0.0.1:8080 with data in ./data:
             topics are created on first publish, no auth (for laptops and tests)
  broker     run a broker (topics must be created first unless --auto-create-topics);
             --namesrv registers it with name servers
  namesrv    run a name server: the registry of brokers and topic routes
  token      mint an API token for a scope: "postbus token --help"
  bench      load tools: "postbus bench publish --help"
  backup     copy what a data directory cannot rebuild (meta.db, keys, commitlog),
             also while a broker runs on it: "postbus backup --help"
  admin      operate a running bus, as mqadmin: topics, groups, messages, dlq,
             subscriptions, replicas, cluster ("postbus admin --help")
  version    print the version and exit

Run "postbus <command> --help" for a command's flags. Every flag can also be
set in the environment: --flush-interval=1s is POSTBUS_FLUSH_INTERVAL=1s.

Quick start:
  postbus dev &
  curl -i -X POST localhost:8080/v1/topics/orders/messages \
       -H 'Postbus-Tag: created' -H 'Postbus-Keys: order-1001' -d '{"id":1001}'
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "dev", "broker":
		err = serve(ctx, args[0], args[1:], stderr)
	case "namesrv":
		err = serveNamesrv(ctx, args[1:], stderr)
	case "bench":
		err = runBench(ctx, args[1:], stdout, stderr)
	case "token":
		err = token(ctx, args[1:], stdout, stderr)
	case "backup":
		err = backup(ctx, args[1:], stdout, stderr)
	case "admin":
		// admin has exit codes of its own for scripts to branch on.
		return runAdmin(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, versionString())
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "postbus: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		// A signal before the command was up: a stop, not a failure.
		fmt.Fprintf(stderr, "postbus %s: %v\n", args[0], err)
		return 0
	default:
		fmt.Fprintf(stderr, "postbus %s: %v\n", args[0], err)
		return 1
	}
}

// errUsage reports a command line that could not be parsed; the flag
// package has already printed why.
var errUsage = errors.New("usage")

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const benchUsage = `Usage: postbus bench <tool> [flags]

Tools:
  publish    publish to a broker over HTTP with N connections and report
             msgs/s, MB/s and latency percentiles ("postbus bench publish --help")
  push       publish to a topic with subscriptions pointing at a built-in local sink
             and report deliveries/s and publish-to-webhook latency ("postbus bench push --help")
  pull       long-poll a topic with N pullers that ack every answer while publishing, and
             report received+acked msgs/s and publish-to-receive latency ("postbus bench pull --help")
`
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, benchUsage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	switch args[0] {
	case "publish":
		return bench.Publish(ctx, args[1:], stdout)
	case "push":
		return bench.Push(ctx, args[1:], stdout)
	case "pull":
		return bench.Pull(ctx, args[1:], stdout)
	default:
		fmt.Fprintf(stderr, "postbus bench: unknown tool %q\n\n%s", args[0], benchUsage)
		return errUsage
	}
}
