// Package compat runs Apache's Go client (rocketmq-client-go/v2) against the
// broker under test: `apogee standalone`, started here on ephemeral loopback
// ports (binary from $APOGEE_BIN, default ../../target/debug/apogee), or an
// already running NameServer and broker given as $COMPAT_NAMESRV and
// $COMPAT_BROKER_ADDR (Apache RocketMQ from scripts/reference).
package compat

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/admin"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/rlog"
)

var (
	namesrv    string
	brokerAddr string
)

func TestMain(m *testing.M) {
	rlog.SetLogLevel("error")
	os.Exit(run(m))
}

func run(m *testing.M) int {
	namesrv = os.Getenv("COMPAT_NAMESRV")
	brokerAddr = os.Getenv("COMPAT_BROKER_ADDR")
	if namesrv != "" && brokerAddr != "" {
		return m.Run()
	}
	stop, err := startApogee()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot start apogee standalone:", err)
		return 1
	}
	defer stop()
	return m.Run()
}

// startApogee starts `apogee standalone` in a temp dir and waits for both
// listen addresses; the returned func stops it and removes the dir.
func startApogee() (func(), error) {
	bin := os.Getenv("APOGEE_BIN")
	if bin == "" {
		bin = "../../target/debug/apogee"
	}
	// The process starts in its temp dir: a relative path would not resolve there.
	bin, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "apogee-compat-go")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "standalone", "--namesrv-port", "0", "--listen-port", "0",
		"--set", "bindAddress=127.0.0.1", "--set", "brokerIP1=127.0.0.1",
		"--set", "diskSpaceWarningLevelRatio=100", "--set", "diskSpaceCleanForciblyRatio=100",
		"--set", "diskMaxUsedSpaceRatio=100")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "APOGEE_LOG=warn")
	cmd.Stderr = os.Stderr
	dieWithParent(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		os.RemoveAll(dir)
	}
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, "apogee namesrv listening on "); ok {
				namesrv = strings.TrimSpace(a)
			} else if a, ok := strings.CutPrefix(line, "apogee broker listening on "); ok {
				brokerAddr = strings.TrimSpace(a)
			}
			if namesrv != "" && brokerAddr != "" {
				close(found)
				break
			}
		}
		_, _ = bufio.NewReader(out).WriteTo(devNull{})
	}()
	select {
	case <-found:
		return stop, nil
	case <-time.After(30 * time.Second):
		stop()
		return nil, fmt.Errorf("%s did not print its listen addresses within 30 s", bin)
	}
}

type devNull struct{}

func (devNull) Write(p []byte) (int, error) { return len(p), nil }

// unique returns prefix-xxxxxxxx.
func unique(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// createTopic creates topic with 4 queues on the broker under test.
func createTopic(t *testing.T, topic string) string {
	t.Helper()
	a, err := admin.NewAdmin(admin.WithResolver(primitive.NewPassthroughResolver([]string{namesrv})))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.CreateTopic(ctx, admin.WithTopicCreate(topic), admin.WithBrokerAddrCreate(brokerAddr)); err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	// The broker registers the new topic with the NameServer on its own time.
	eventually(t, 20*time.Second, "route of "+topic, func() bool {
		mqs, err := a.FetchPublishMessageQueues(ctx, topic)
		return err == nil && len(mqs) > 0
	})
	return topic
}

// eventually polls cond every 50 ms until it holds; fails after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
