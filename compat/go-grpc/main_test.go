// RocketMQ 5's official Go client (rocketmq-clients/golang/v5) over gRPC
// against apogee standalone (APOGEE_BIN), or against COMPAT_GRPC_ENDPOINT
// when set: normal, FIFO, delay and transactional sends; the simple
// consumer's receive, ack and change of invisible duration; tag and SQL92
// filters.
//
// APOGEE_GRPC_TOPOLOGY=proxy runs the same tests against `apogee proxy` in
// front of a cluster instead: a NameServer and two brokers (broker-a,
// broker-b, one cluster), all on ephemeral loopback ports. Topics are
// auto-created on both brokers, so every route spans two brokers.
package compatgrpc

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	"github.com/apache/rocketmq-clients/golang/v5/credentials"
)

var (
	endpoint string
	namesrv  string
	apogee   string
	// topology is "standalone" or "proxy".
	topology = "standalone"
)

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Broker settings every topology uses: loopback addresses, quick
// transaction check-backs, no disk-space refusals on a full CI disk.
var brokerSettings = []string{
	"--set", "brokerIP1=127.0.0.1",
	"--set", "bindAddress=127.0.0.1",
	"--set", "transactionTimeOut=1000",
	"--set", "transactionCheckInterval=500",
	"--set", "diskMaxUsedSpaceRatio=100",
	"--set", "diskSpaceWarningLevelRatio=100",
	"--set", "diskSpaceCleanForciblyRatio=100",
}

// procs are the apogee processes this run started, stopped at the end.
var procs []*exec.Cmd

func stopAll() {
	for i := len(procs) - 1; i >= 0; i-- {
		_ = procs[i].Process.Kill()
		_ = procs[i].Wait()
	}
	procs = nil
}

// start runs apogee with args, its output in logFile, and waits until it
// prints a line starting with each of want; it returns the rest of those lines.
func start(logFile string, want []string, args ...string) ([]string, error) {
	cmd := exec.Command(apogee, args...)
	cmd.Env = append(os.Environ(), "APOGEE_LOG=warn")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	log, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start apogee %s: %w", args[0], err)
	}
	procs = append(procs, cmd)
	found := make([]string, len(want))
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		missing := len(want)
		for sc.Scan() {
			line := sc.Text()
			for i, w := range want {
				if found[i] == "" && strings.HasPrefix(line, w) {
					found[i] = strings.TrimSpace(strings.TrimPrefix(line, w))
					missing--
					if missing == 0 {
						close(ready)
					}
				}
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case <-ready:
		return found, nil
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("apogee %s did not print %v (log: %s)", args[0], want, logFile)
	}
}

// loopback turns a printed listen address (maybe 0.0.0.0:port) into 127.0.0.1:port.
func loopback(addr string) string {
	if _, port, err := net.SplitHostPort(addr); err == nil {
		return "127.0.0.1:" + port
	}
	return addr
}

func startStandalone(dir string) error {
	ns, listen, grpcPort := freePort(), freePort(), freePort()
	for listen < 1100 {
		listen = freePort()
	}
	args := append([]string{"standalone",
		"--namesrv-port", fmt.Sprint(ns),
		"--listen-port", fmt.Sprint(listen),
		"--set", "storePathRootDir=" + filepath.Join(dir, "store"),
		"--set", fmt.Sprintf("grpcServerPort=%d", grpcPort),
	}, brokerSettings...)
	if _, err := start(filepath.Join(dir, "standalone.log"), []string{"apogee grpc listening on"}, args...); err != nil {
		return err
	}
	endpoint = fmt.Sprintf("127.0.0.1:%d", grpcPort)
	namesrv = fmt.Sprintf("127.0.0.1:%d", ns)
	return nil
}

// startProxyCluster starts a NameServer, broker-a and broker-b (one
// cluster, each with its own ports, data and local gRPC port) and `apogee
// proxy` in front of them; every port is picked by the process (port 0).
func startProxyCluster(dir string) error {
	got, err := start(filepath.Join(dir, "namesrv.log"), []string{"apogee namesrv listening on"},
		"namesrv", "--listen-port", "0", "--set", "bindAddress=127.0.0.1")
	if err != nil {
		return err
	}
	namesrv = loopback(got[0])
	for _, name := range []string{"broker-a", "broker-b"} {
		args := append([]string{"broker", "-n", namesrv, "--listen-port", "0",
			"--set", "brokerClusterName=DefaultCluster",
			"--set", "brokerName=" + name,
			"--set", "storePathRootDir=" + filepath.Join(dir, name),
			"--set", "grpcServerPort=0",
		}, brokerSettings...)
		if _, err := start(filepath.Join(dir, name+".log"),
			[]string{"apogee broker listening on", "apogee grpc listening on"}, args...); err != nil {
			return err
		}
	}
	got, err = start(filepath.Join(dir, "proxy.log"), []string{"apogee grpc listening on"},
		"proxy", "-n", namesrv, "--grpc-server-port", "0", "--bind-address", "127.0.0.1")
	if err != nil {
		return err
	}
	endpoint = loopback(got[0])
	// Both brokers must be in the route registry before the first test.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(apogee, "admin", "clusterList", "-n", namesrv).CombinedOutput()
		if err == nil && strings.Contains(string(out), "broker-a") && strings.Contains(string(out), "broker-b") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("both brokers did not register with the NameServer: %v %s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	// The client logs under $HOME unless told otherwise.
	dir, err := os.MkdirTemp("", "apogee-go-grpc-")
	if err != nil {
		panic(err)
	}
	os.Setenv("rocketmq.client.logRoot", filepath.Join(dir, "logs"))
	os.Setenv("rocketmq.client.logLevel", "error")
	rmq.ResetLogger()
	code := func() int {
		if ep := os.Getenv("COMPAT_GRPC_ENDPOINT"); ep != "" {
			endpoint = ep
			return m.Run()
		}
		apogee = os.Getenv("APOGEE_BIN")
		if apogee == "" {
			apogee = "../../target/debug/apogee"
		}
		defer stopAll()
		switch t := os.Getenv("APOGEE_GRPC_TOPOLOGY"); t {
		case "", "standalone":
			err = startStandalone(dir)
		case "proxy":
			topology = "proxy"
			err = startProxyCluster(dir)
		default:
			err = fmt.Errorf("APOGEE_GRPC_TOPOLOGY=%q: want standalone or proxy", t)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("topology %s: gRPC endpoint %s, NameServer %s\n", topology, endpoint, namesrv)
		return m.Run()
	}()
	os.RemoveAll(dir)
	os.Exit(code)
}

func unique(prefix string) string {
	return fmt.Sprintf("%s-%08x", prefix, rand.Uint32())
}

func config(group string) *rmq.Config {
	return &rmq.Config{
		Endpoint:      endpoint,
		ConsumerGroup: group,
		Credentials:   &credentials.SessionCredentials{},
	}
}

func newProducer(t *testing.T, opts ...rmq.ProducerOption) rmq.Producer {
	t.Helper()
	p, err := rmq.NewProducer(config(""), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.GracefulStop() })
	return p
}

func newConsumer(t *testing.T, group string, subs map[string]*rmq.FilterExpression) rmq.SimpleConsumer {
	t.Helper()
	c, err := rmq.NewSimpleConsumer(config(group),
		rmq.WithAwaitDuration(2*time.Second),
		rmq.WithSubscriptionExpressions(subs))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.GracefulStop() })
	return c
}

func send(t *testing.T, p rmq.Producer, msg *rmq.Message) {
	t.Helper()
	r, err := p.Send(context.Background(), msg)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if len(r) != 1 || r[0].MessageID == "" {
		t.Fatalf("send receipt: %+v", r)
	}
}

// receive pops until done(all) or the time is up, acking unless told not to.
func receive(t *testing.T, c rmq.SimpleConsumer, within, invisible time.Duration, ack bool,
	done func([]*rmq.MessageView) bool) []*rmq.MessageView {
	t.Helper()
	var all []*rmq.MessageView
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		got, err := c.Receive(context.Background(), 16, invisible)
		if err != nil && !strings.Contains(err.Error(), "MESSAGE_NOT_FOUND") {
			t.Fatalf("receive: %v", err)
		}
		for _, m := range got {
			all = append(all, m)
			if ack {
				if err := c.Ack(context.Background(), m); err != nil {
					t.Fatalf("ack: %v", err)
				}
			}
		}
		if done != nil && done(all) {
			break
		}
	}
	return all
}

func bodies(ms []*rmq.MessageView) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, string(m.GetBody()))
	}
	return out
}

func sorted(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

func TestNormalMessagesOnceAndAcked(t *testing.T) {
	topic := unique("GoNormal")
	p := newProducer(t, rmq.WithTopics(topic))
	var want []string
	for i := 0; i < 20; i++ {
		m := &rmq.Message{Topic: topic, Body: []byte(fmt.Sprintf("g%02d", i))}
		m.SetTag("a")
		m.SetKeys(fmt.Sprintf("k%d", i))
		send(t, p, m)
		want = append(want, fmt.Sprintf("g%02d", i))
	}
	c := newConsumer(t, unique("go-normal"), map[string]*rmq.FilterExpression{topic: rmq.SUB_ALL})
	got := receive(t, c, 25*time.Second, 10*time.Second, true,
		func(all []*rmq.MessageView) bool { return len(all) >= 20 })
	if fmt.Sprint(sorted(bodies(got))) != fmt.Sprint(want) {
		t.Fatalf("received %v, want %v", sorted(bodies(got)), want)
	}
	for _, m := range got {
		if m.GetDeliveryAttempt() != 1 || m.GetTopic() != topic || m.GetTag() == nil || *m.GetTag() != "a" {
			t.Fatalf("message %s: attempt %d topic %s tag %v", m.GetMessageId(), m.GetDeliveryAttempt(), m.GetTopic(), m.GetTag())
		}
	}
	again := receive(t, c, 5*time.Second, 2*time.Second, true, nil)
	if len(again) != 0 {
		t.Fatalf("acked messages came back: %v", bodies(again))
	}
}

func TestUnackedComesBackAndChangeInvisibleHolds(t *testing.T) {
	topic := unique("GoInvisible")
	p := newProducer(t, rmq.WithTopics(topic))
	send(t, p, &rmq.Message{Topic: topic, Body: []byte("lost")})
	send(t, p, &rmq.Message{Topic: topic, Body: []byte("held")})
	c := newConsumer(t, unique("go-invisible"), map[string]*rmq.FilterExpression{topic: rmq.SUB_ALL})
	first := receive(t, c, 20*time.Second, 3*time.Second, false,
		func(all []*rmq.MessageView) bool { return len(all) >= 2 })
	if len(first) != 2 {
		t.Fatalf("first delivery: %v", bodies(first))
	}
	for _, m := range first {
		if string(m.GetBody()) == "held" {
			if err := c.ChangeInvisibleDuration(m, time.Minute); err != nil {
				t.Fatalf("change invisible duration: %v", err)
			}
		}
	}
	back := receive(t, c, 20*time.Second, time.Minute, false,
		func(all []*rmq.MessageView) bool { return len(all) >= 1 })
	if len(back) != 1 || string(back[0].GetBody()) != "lost" || back[0].GetDeliveryAttempt() != 2 {
		t.Fatalf("came back: %v (attempt %d)", bodies(back), func() int32 {
			if len(back) > 0 {
				return back[0].GetDeliveryAttempt()
			}
			return 0
		}())
	}
	if err := c.Ack(context.Background(), back[0]); err != nil {
		t.Fatal(err)
	}
}

func TestTagAndSqlFilters(t *testing.T) {
	topic := unique("GoFilter")
	p := newProducer(t, rmq.WithTopics(topic))
	for i := 0; i < 8; i++ {
		m := &rmq.Message{Topic: topic, Body: []byte(fmt.Sprintf("f%d", i))}
		if i%2 == 1 {
			m.SetTag("odd")
		} else {
			m.SetTag("even")
		}
		m.AddProperty("n", fmt.Sprint(i))
		send(t, p, m)
	}
	tag := newConsumer(t, unique("go-tag"), map[string]*rmq.FilterExpression{topic: rmq.NewFilterExpression("odd")})
	sql := newConsumer(t, unique("go-sql"), map[string]*rmq.FilterExpression{
		topic: rmq.NewFilterExpressionWithType("n BETWEEN 2 AND 4", rmq.SQL92)})
	byTag := sorted(bodies(receive(t, tag, 8*time.Second, 10*time.Second, true, nil)))
	bySql := sorted(bodies(receive(t, sql, 8*time.Second, 10*time.Second, true, nil)))
	if fmt.Sprint(byTag) != "[f1 f3 f5 f7]" {
		t.Fatalf("tag filter: %v", byTag)
	}
	if fmt.Sprint(bySql) != "[f2 f3 f4]" {
		t.Fatalf("SQL92 filter: %v", bySql)
	}
}

func TestFifoGroupInOrder(t *testing.T) {
	topic := unique("GoFifo")
	group := unique("go-fifo")
	out, err := exec.Command(apogee, "admin", "updateSubGroup", "-n", namesrv, "-c", "DefaultCluster",
		"-g", group, "-o", "true").CombinedOutput()
	if err != nil {
		t.Fatalf("updateSubGroup: %v %s", err, out)
	}
	p := newProducer(t, rmq.WithTopics(topic))
	for i := 0; i < 10; i++ {
		m := &rmq.Message{Topic: topic, Body: []byte(fmt.Sprint(i))}
		m.SetMessageGroup("order-1")
		send(t, p, m)
	}
	c := newConsumer(t, group, map[string]*rmq.FilterExpression{topic: rmq.SUB_ALL})
	got := receive(t, c, 25*time.Second, 10*time.Second, true,
		func(all []*rmq.MessageView) bool { return len(all) >= 10 })
	if fmt.Sprint(bodies(got)) != "[0 1 2 3 4 5 6 7 8 9]" {
		t.Fatalf("FIFO order: %v", bodies(got))
	}
}

func TestDelayedMessageWaitsForItsTime(t *testing.T) {
	topic := unique("GoDelay")
	p := newProducer(t, rmq.WithTopics(topic))
	at := time.Now().Add(3 * time.Second)
	m := &rmq.Message{Topic: topic, Body: []byte("later")}
	m.SetDelayTimestamp(at)
	send(t, p, m)
	c := newConsumer(t, unique("go-delay"), map[string]*rmq.FilterExpression{topic: rmq.SUB_ALL})
	got := receive(t, c, 15*time.Second, 10*time.Second, true,
		func(all []*rmq.MessageView) bool { return len(all) >= 1 })
	if len(got) != 1 || string(got[0].GetBody()) != "later" {
		t.Fatalf("delayed message: %v", bodies(got))
	}
	if time.Now().Before(at.Add(-200 * time.Millisecond)) {
		t.Fatalf("delivered before its time %v", at)
	}
}

func TestTransactionsCommitRollbackAndCheckBack(t *testing.T) {
	topic := unique("GoTx")
	var mu sync.Mutex
	var checked []string
	p := newProducer(t, rmq.WithTopics(topic), rmq.WithTransactionChecker(&rmq.TransactionChecker{
		Check: func(mv *rmq.MessageView) rmq.TransactionResolution {
			mu.Lock()
			checked = append(checked, string(mv.GetBody()))
			mu.Unlock()
			return rmq.COMMIT
		},
	}))
	for _, c := range []struct{ body, end string }{{"commit", "commit"}, {"rollback", "rollback"}, {"checked", ""}} {
		tx := p.BeginTransaction()
		if _, err := p.SendWithTransaction(context.Background(), &rmq.Message{Topic: topic, Body: []byte(c.body)}, tx); err != nil {
			t.Fatalf("send %s: %v", c.body, err)
		}
		switch c.end {
		case "commit":
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		case "rollback":
			if err := tx.RollBack(); err != nil {
				t.Fatal(err)
			}
		}
	}
	c := newConsumer(t, unique("go-tx"), map[string]*rmq.FilterExpression{topic: rmq.SUB_ALL})
	got := receive(t, c, 30*time.Second, 10*time.Second, true,
		func(all []*rmq.MessageView) bool { return len(all) >= 2 })
	got = append(got, receive(t, c, 3*time.Second, 10*time.Second, true, nil)...)
	if fmt.Sprint(sorted(bodies(got))) != "[checked commit]" {
		t.Fatalf("committed messages: %v", bodies(got))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(checked) == 0 || checked[0] != "checked" {
		t.Fatalf("check-back asked about %v", checked)
	}
}

func TestBadInputIsRefused(t *testing.T) {
	p := newProducer(t)
	if _, err := p.Send(context.Background(), &rmq.Message{Topic: "bad topic!", Body: []byte("x")}); err == nil {
		t.Fatal("a bad topic name was accepted")
	}
	if _, err := p.Send(context.Background(), &rmq.Message{Topic: unique("GoBig"), Body: make([]byte, 5<<20)}); err == nil {
		t.Fatal("a 5 MiB body was accepted")
	}
}

// In front of two brokers, sends are spread over both and the simple
// consumer receives (and acks) what each of them holds.
func TestMessagesSpreadOverBothBrokers(t *testing.T) {
	if topology != "proxy" {
		t.Skip("needs APOGEE_GRPC_TOPOLOGY=proxy (two brokers behind apogee proxy)")
	}
	topic := unique("GoSpread")
	p := newProducer(t, rmq.WithTopics(topic))
	var want []string
	for i := 0; i < 32; i++ {
		send(t, p, &rmq.Message{Topic: topic, Body: []byte(fmt.Sprintf("s%02d", i))})
		want = append(want, fmt.Sprintf("s%02d", i))
	}
	out, err := exec.Command(apogee, "admin", "topicStatus", "-n", namesrv, "-t", topic, "--json").Output()
	if err != nil {
		t.Fatalf("topicStatus: %v", err)
	}
	var status struct {
		Queues []struct {
			BrokerName string `json:"broker_name"`
			MaxOffset  int64  `json:"max_offset"`
		} `json:"queues"`
	}
	if err := json.Unmarshal(out, &status); err != nil {
		t.Fatalf("topicStatus output %q: %v", out, err)
	}
	per := map[string]int64{}
	for _, q := range status.Queues {
		per[q.BrokerName] += q.MaxOffset
	}
	if per["broker-a"] == 0 || per["broker-b"] == 0 || per["broker-a"]+per["broker-b"] != 32 {
		t.Fatalf("messages per broker: %v, want 32 spread over broker-a and broker-b", per)
	}
	c := newConsumer(t, unique("go-spread"), map[string]*rmq.FilterExpression{topic: rmq.SUB_ALL})
	got := receive(t, c, 30*time.Second, 10*time.Second, true,
		func(all []*rmq.MessageView) bool { return len(all) >= 32 })
	if fmt.Sprint(sorted(bodies(got))) != fmt.Sprint(want) {
		t.Fatalf("received %v, want %v", sorted(bodies(got)), want)
	}
	again := receive(t, c, 4*time.Second, 2*time.Second, true, nil)
	if len(again) != 0 {
		t.Fatalf("acked messages came back: %v", bodies(again))
	}
}
