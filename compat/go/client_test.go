package compat

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
)

func newProducer(t *testing.T, opts ...producer.Option) rocketmq.Producer {
	t.Helper()
	all := append([]producer.Option{
		producer.WithNsResolver(primitive.NewPassthroughResolver([]string{namesrv})),
		producer.WithGroupName(unique("PID")),
		producer.WithInstanceName(unique("inst")),
		producer.WithRetry(2),
		producer.WithSendMsgTimeout(5 * time.Second),
	}, opts...)
	p, err := rocketmq.NewProducer(all...)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Shutdown() })
	return p
}

// received collects what a listener was given.
type received struct {
	mu   sync.Mutex
	msgs []*primitive.MessageExt
	at   map[string]time.Time
}

func (r *received) add(msgs ...*primitive.MessageExt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at == nil {
		r.at = map[string]time.Time{}
	}
	for _, m := range msgs {
		r.msgs = append(r.msgs, m)
		if _, ok := r.at[string(m.Body)]; !ok {
			r.at[string(m.Body)] = time.Now()
		}
	}
}

func (r *received) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *received) bodies() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.msgs))
	for _, m := range r.msgs {
		out = append(out, string(m.Body))
	}
	sort.Strings(out)
	return out
}

func pushConsumer(t *testing.T, group, topic, expr string, orderly bool,
	f func(context.Context, ...*primitive.MessageExt) (consumer.ConsumeResult, error),
	opts ...consumer.Option) rocketmq.PushConsumer {
	t.Helper()
	all := append([]consumer.Option{
		consumer.WithNsResolver(primitive.NewPassthroughResolver([]string{namesrv})),
		consumer.WithGroupName(group),
		consumer.WithInstance(unique("inst")),
		consumer.WithConsumerModel(consumer.Clustering),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset),
		consumer.WithConsumerOrder(orderly),
	}, opts...)
	c, err := rocketmq.NewPushConsumer(all...)
	if err != nil {
		t.Fatal(err)
	}
	sel := consumer.MessageSelector{Type: consumer.TAG, Expression: expr}
	if err := c.Subscribe(topic, sel, f); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Shutdown() })
	return c
}

func collect(r *received) func(context.Context, ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	return func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		r.add(msgs...)
		return consumer.ConsumeSuccess, nil
	}
}

func sendSync(t *testing.T, p rocketmq.Producer, m *primitive.Message) *primitive.SendResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := p.SendSync(ctx, m)
	if err != nil {
		t.Fatalf("send to %s: %v", m.Topic, err)
	}
	if r.Status != primitive.SendOK {
		t.Fatalf("send status %v", r.Status)
	}
	return r
}

func TestSyncSendAndClusteringPushConsumer(t *testing.T) {
	topic := createTopic(t, unique("go-sync"))
	p := newProducer(t)
	ids := map[string]bool{}
	var want []string
	for i := 0; i < 10; i++ {
		body := fmt.Sprintf("sync-%02d", i)
		r := sendSync(t, p, primitive.NewMessage(topic, []byte(body)).WithTag("TagA").WithKeys([]string{"k" + body}))
		if r.MsgID == "" || r.OffsetMsgID == "" || r.MessageQueue == nil || r.MessageQueue.Topic != topic {
			t.Fatalf("incomplete send result %+v", r)
		}
		ids[r.MsgID] = true
		want = append(want, body)
	}
	if len(ids) != 10 {
		t.Fatalf("message ids are not unique: %v", ids)
	}
	var got received
	pushConsumer(t, unique("CID_go_sync"), topic, "*", false, collect(&got))
	eventually(t, 30*time.Second, "10 messages", func() bool { return got.count() >= 10 })
	time.Sleep(300 * time.Millisecond)
	if b := got.bodies(); strings.Join(b, ",") != strings.Join(want, ",") {
		t.Fatalf("consumed %v, want %v", b, want)
	}
	for _, m := range got.msgs {
		if !ids[m.MsgId] || m.GetTags() != "TagA" || m.GetKeys() != "k"+string(m.Body) {
			t.Fatalf("message %s: id %s tags %q keys %q", m.Body, m.MsgId, m.GetTags(), m.GetKeys())
		}
	}
}

func TestOrderlyConsume(t *testing.T) {
	topic := createTopic(t, unique("go-order"))
	p := newProducer(t, producer.WithQueueSelector(producer.NewHashQueueSelector()))
	const orders, perOrder = 4, 10
	queueOf := map[string]int{}
	for i := 0; i < perOrder; i++ {
		for o := 0; o < orders; o++ {
			key := fmt.Sprintf("order-%d", o)
			m := primitive.NewMessage(topic, []byte(fmt.Sprintf("%d:%d", o, i))).WithShardingKey(key)
			r := sendSync(t, p, m)
			if q, ok := queueOf[key]; ok && q != r.MessageQueue.QueueId {
				t.Fatalf("%s went to queues %d and %d", key, q, r.MessageQueue.QueueId)
			}
			queueOf[key] = r.MessageQueue.QueueId
		}
	}
	var mu sync.Mutex
	var seen []string
	pushConsumer(t, unique("CID_go_order"), topic, "*", true,
		func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, m := range msgs {
				seen = append(seen, string(m.Body))
			}
			return consumer.ConsumeSuccess, nil
		})
	eventually(t, 30*time.Second, "ordered messages", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= orders*perOrder
	})
	mu.Lock()
	defer mu.Unlock()
	next := make([]int, orders)
	for _, s := range seen {
		parts := strings.Split(s, ":")
		o, _ := strconv.Atoi(parts[0])
		i, _ := strconv.Atoi(parts[1])
		if next[o] != i {
			t.Fatalf("order %d out of sequence: %v", o, seen)
		}
		next[o]++
	}
}

func TestTagFilter(t *testing.T) {
	topic := createTopic(t, unique("go-tags"))
	p := newProducer(t)
	var want []string
	for i := 0; i < 5; i++ {
		for _, tag := range []string{"TagA", "TagB", "TagC"} {
			body := fmt.Sprintf("%s-%d", tag, i)
			sendSync(t, p, primitive.NewMessage(topic, []byte(body)).WithTag(tag))
			if tag != "TagC" {
				want = append(want, body)
			}
		}
	}
	sort.Strings(want)
	var got received
	pushConsumer(t, unique("CID_go_tags"), topic, "TagA || TagB", false, collect(&got))
	eventually(t, 30*time.Second, "10 messages", func() bool { return got.count() >= 10 })
	time.Sleep(time.Second)
	if b := got.bodies(); strings.Join(b, ",") != strings.Join(want, ",") {
		t.Fatalf("consumed %v, want %v", b, want)
	}
}

func TestDelayLevel(t *testing.T) {
	topic := createTopic(t, unique("go-delay"))
	p := newProducer(t)
	var got received
	pushConsumer(t, unique("CID_go_delay"), topic, "*", false, collect(&got))
	sent := time.Now()
	sendSync(t, p, primitive.NewMessage(topic, []byte("later")).WithDelayTimeLevel(2)) // 5 s
	sendSync(t, p, primitive.NewMessage(topic, []byte("now")))
	eventually(t, 30*time.Second, "both messages", func() bool { return got.count() >= 2 })
	got.mu.Lock()
	defer got.mu.Unlock()
	delay := got.at["later"].Sub(sent)
	if delay < 4500*time.Millisecond || delay > 15*time.Second {
		t.Fatalf("delay level 2 took %v", delay)
	}
	if !got.at["now"].Before(got.at["later"]) {
		t.Fatalf("the delayed message came first")
	}
}

func TestRetryLater(t *testing.T) {
	topic := createTopic(t, unique("go-retry"))
	group := unique("CID_go_retry")
	// The Go client reads routes before its first heartbeat, which is what
	// makes a broker create the group's retry topic: without this its next
	// route refresh (30 s) would come first.
	createTopic(t, "%RETRY%"+group)
	p := newProducer(t)
	var mu sync.Mutex
	var attempts []int32
	pushConsumer(t, group, topic, "*", false,
		func(ctx context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
			mu.Lock()
			defer mu.Unlock()
			m := msgs[0]
			attempts = append(attempts, m.ReconsumeTimes)
			if m.ReconsumeTimes == 0 {
				if cc, ok := primitive.GetConcurrentlyCtx(ctx); ok {
					cc.DelayLevelWhenNextConsume = 1
				}
				return consumer.ConsumeRetryLater, nil
			}
			if m.Topic != topic || string(m.Body) != "once" {
				t.Errorf("retried message: topic %s body %s", m.Topic, m.Body)
			}
			return consumer.ConsumeSuccess, nil
		}, consumer.WithConsumeMessageBatchMaxSize(1))
	sendSync(t, p, primitive.NewMessage(topic, []byte("once")))
	eventually(t, 60*time.Second, "a redelivery", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts) >= 2
	})
	time.Sleep(2 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(attempts) != "[0 1]" {
		t.Fatalf("reconsume times per delivery: %v, want [0 1]", attempts)
	}
}
