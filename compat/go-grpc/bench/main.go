// Command bench drives an Apogee (or any RocketMQ 5) gRPC endpoint with
// the official Go client, for a sanity comparison with `apogee bench
// produce|consume --grpc` (docs/BENCHMARKS.md):
//
//	go run ./bench -endpoint 127.0.0.1:8081 -topic T -mode produce -senders 64 -size 1024 -seconds 15
//	go run ./bench -endpoint 127.0.0.1:8081 -topic T -mode consume -group G -receivers 4 -count 200000
//
// produce: `senders` goroutines each send one message at a time (sync);
// consume: `receivers` goroutines each Receive(32) then Ack every message
// in parallel (the Go client acks one message per AckMessage call). Prints
// one JSON line.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	"github.com/apache/rocketmq-clients/golang/v5/credentials"
)

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:8081", "gRPC endpoint host:port")
	topic := flag.String("topic", "BenchmarkTest", "topic")
	group := flag.String("group", "go-bench", "consumer group (consume)")
	mode := flag.String("mode", "produce", "produce or consume")
	senders := flag.Int("senders", 64, "concurrent senders (produce)")
	size := flag.Int("size", 1024, "body size in bytes (produce)")
	seconds := flag.Int("seconds", 15, "run time (produce), time limit (consume)")
	receivers := flag.Int("receivers", 4, "receive loops (consume)")
	count := flag.Int64("count", 200000, "messages to receive (consume)")
	flag.Parse()

	dir, err := os.MkdirTemp("", "apogee-go-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	os.Setenv("rocketmq.client.logRoot", filepath.Join(dir, "logs"))
	os.Setenv("rocketmq.client.logLevel", "error")
	rmq.ResetLogger()
	cfg := &rmq.Config{Endpoint: *endpoint, ConsumerGroup: *group, Credentials: &credentials.SessionCredentials{}}

	var lat []time.Duration
	var mu sync.Mutex
	var done, failed atomic.Int64
	start := time.Now()
	switch *mode {
	case "produce":
		p, err := rmq.NewProducer(cfg, rmq.WithTopics(*topic))
		if err == nil {
			err = p.Start()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "producer:", err)
			os.Exit(1)
		}
		defer p.GracefulStop()
		body := []byte(strings.Repeat("x", *size))
		deadline := time.Now().Add(time.Duration(*seconds) * time.Second)
		start = time.Now()
		var wg sync.WaitGroup
		for i := 0; i < *senders; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for time.Now().Before(deadline) {
					t := time.Now()
					if _, err := p.Send(context.Background(), &rmq.Message{Topic: *topic, Body: body}); err != nil {
						failed.Add(1)
						continue
					}
					mine = append(mine, time.Since(t))
					done.Add(1)
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
	case "consume":
		c, err := rmq.NewSimpleConsumer(cfg, rmq.WithAwaitDuration(2*time.Second),
			rmq.WithSubscriptionExpressions(map[string]*rmq.FilterExpression{*topic: rmq.SUB_ALL}))
		if err == nil {
			err = c.Start()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "consumer:", err)
			os.Exit(1)
		}
		defer c.GracefulStop()
		deadline := time.Now().Add(time.Duration(*seconds) * time.Second)
		var first atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < *receivers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for done.Load() < *count && time.Now().Before(deadline) {
					t := time.Now()
					got, err := c.Receive(context.Background(), 32, time.Minute)
					if err != nil || len(got) == 0 {
						continue
					}
					first.CompareAndSwap(0, t.UnixNano())
					// Acks in parallel, as `apogee bench consume --pop` does.
					var acks sync.WaitGroup
					for _, m := range got {
						acks.Add(1)
						go func(m *rmq.MessageView) {
							defer acks.Done()
							if err := c.Ack(context.Background(), m); err != nil {
								failed.Add(1)
							}
						}(m)
					}
					acks.Wait()
					mine = append(mine, time.Since(t))
					done.Add(int64(len(got)))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		if f := first.Load(); f != 0 {
			start = time.Unix(0, f)
		}
	default:
		fmt.Fprintln(os.Stderr, "-mode must be produce or consume")
		os.Exit(2)
	}
	elapsed := time.Since(start).Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(f float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(f*float64(len(lat)-1))].Microseconds()) / 1000
	}
	out, _ := json.Marshal(map[string]any{
		"client": "rocketmq-clients/golang/v5", "mode": *mode, "done": done.Load(), "failed": failed.Load(),
		"elapsed_s": elapsed, "tps": float64(done.Load()) / elapsed,
		// produce: one send; consume: one receive plus the acks of its messages.
		"p50_ms": q(0.5), "p99_ms": q(0.99),
	})
	fmt.Println(string(out))
}
