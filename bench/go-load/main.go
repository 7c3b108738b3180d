// Command go-load drives etcd v3 load with etcd's own Go client (clientv3 3.4.23, built from
// Debian's golang-etcd-server-dev sources), so that keelson and etcd can also be compared
// under the client Go programs (Kubernetes among them) really use. It mirrors keelson-bench's
// put and range modes: the same keys (prefix + zero-padded number, --key-size bytes), random
// values of --val-size bytes new for every put, closed loops of --clients workers spread over
// --conns client connections, bounded by --total operations and --duration, each request with
// its own deadline. It prints one JSON line with the fields of keelson-bench's report. Its
// watch mode is keelson-bench's too: --watchers watchers on the prefix over --streams watch
// streams, all created before the clock starts, and --clients putters writing values stamped
// with their send time; ops are events delivered per second, the latency is put to event.
//
// Usage: go-load put|range|watch [flags]   (go-load put -h for the flags)
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"google.golang.org/grpc/status"
)

const (
	maxErrorKinds = 20
	maxErrorText  = 200
	// Room for this many samples per worker is reserved before the clock starts.
	presized       = 16 * 1024
	connectTimeout = 10 * time.Second
)

type options struct {
	endpoints      string
	clients        int
	conns          int
	total          uint64
	duration       time.Duration
	requestTimeout time.Duration
	keySpace       uint64
	keySize        int
	valSize        int
	prefix         string
	consistency    string
	watchers       int
	streams        int
	drainTimeout   time.Duration
}

// The JSON a run prints: the fields of keelson-bench's Report (bench/src/report.rs).
type latency struct {
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
}

type errorCounts struct {
	Total uint64            `json:"total"`
	Kinds map[string]uint64 `json:"kinds"`
}

type report struct {
	Mode       string             `json:"mode"`
	Status     string             `json:"status"`
	Detail     string             `json:"detail,omitempty"`
	Conns      int                `json:"conns"`
	Clients    int                `json:"clients"`
	Ops        uint64             `json:"ops"`
	ElapsedSec float64            `json:"elapsed_secs"`
	OpsPerSec  float64            `json:"ops_per_sec"`
	Unit       string             `json:"unit"`
	Latency    latency            `json:"latency"`
	MaxStallMs *float64           `json:"max_stall_ms,omitempty"`
	Errors     errorCounts        `json:"errors"`
	Counters   map[string]float64 `json:"counters"`
}

func (e *errorCounts) add(text string, n uint64) {
	e.Total += n
	if len(text) > maxErrorText {
		text = text[:maxErrorText] + "…"
	}
	if _, seen := e.Kinds[text]; !seen && len(e.Kinds) >= maxErrorKinds {
		text = "(other error kinds)"
	}
	e.Kinds[text] += n
}

// errorText spells an error as keelson-bench does: the gRPC code, a colon, the message.
func errorText(err error) string {
	if err == context.DeadlineExceeded {
		return "DeadlineExceeded: " + err.Error()
	}
	if s, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", s.Code(), s.Message())
	}
	return err.Error()
}

// keyGen makes the keys keelson-bench makes (bench/src/keys.rs).
type keyGen struct {
	prefix string
	width  int
}

func newKeyGen(prefix string, keySize int, space uint64) keyGen {
	digits := len(fmt.Sprint(space - 1))
	width := keySize - len(prefix)
	if width < digits {
		width = digits
	}
	return keyGen{prefix, width}
}

func (k keyGen) key(n uint64) string {
	return fmt.Sprintf("%s%0*d", k.prefix, k.width, n)
}

// pacer hands out operation numbers until the total or the deadline.
type pacer struct {
	next     uint64
	total    uint64
	deadline time.Time
}

func (p *pacer) take() bool {
	i := atomic.AddUint64(&p.next, 1) - 1
	return i < p.total && time.Now().Before(p.deadline)
}

// worker is what one client records: latencies (µs), acknowledgement instants (ns since the
// start, writes only), errors and counters.
type worker struct {
	lat      []int64
	acks     []int64
	errors   errorCounts
	counters map[string]uint64
}

func newWorker(writes bool) *worker {
	w := &worker{
		lat:      make([]int64, 0, presized),
		errors:   errorCounts{Kinds: map[string]uint64{}},
		counters: map[string]uint64{},
	}
	if writes {
		w.acks = make([]int64, 0, presized)
	}
	return w
}

func fail(mode string, o *options, detail string) {
	emit(report{
		Mode: mode, Status: "failed", Detail: detail, Conns: o.conns, Clients: o.clients,
		Errors: errorCounts{Kinds: map[string]uint64{}}, Counters: map[string]float64{},
	})
	os.Exit(2)
}

func emit(r report) {
	line, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-load: encode report:", err)
		os.Exit(2)
	}
	fmt.Println(string(line))
}

// connect opens --conns clients and checks that each answers a Range.
func connect(o *options) ([]*clientv3.Client, error) {
	eps := strings.Split(o.endpoints, ",")
	var clients []*clientv3.Client
	for i := 0; i < o.conns; i++ {
		c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
		if err != nil {
			return clients, fmt.Errorf("connect to %v: %s", eps, errorText(err))
		}
		clients = append(clients, c)
		ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
		_, err = c.Get(ctx, "keelson-bench-probe")
		cancel()
		if err != nil {
			return clients, fmt.Errorf("first request to %v: %s", eps, errorText(err))
		}
	}
	return clients, nil
}

// summarize sorts the latencies (µs) and gives their mean, percentiles and maximum in ms.
func summarize(lat []int64) latency {
	if len(lat) == 0 {
		return latency{}
	}
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	var sum float64
	for _, v := range lat {
		sum += float64(v)
	}
	return latency{
		MeanMs: sum / float64(len(lat)) / 1000,
		P50Ms:  quantile(lat, 0.50),
		P90Ms:  quantile(lat, 0.90),
		P99Ms:  quantile(lat, 0.99),
		P999Ms: quantile(lat, 0.999),
		MaxMs:  float64(lat[len(lat)-1]) / 1000,
	}
}

// quantile is the value at quantile q of sorted samples (the smallest value with at least a
// fraction q of the samples at or below it, as HdrHistogram reports).
func quantile(sorted []int64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return float64(sorted[i]) / 1000
}

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "put" && os.Args[1] != "range" && os.Args[1] != "watch") {
		fmt.Fprintln(os.Stderr, "usage: go-load put|range|watch [flags]  (go-load put -h)")
		os.Exit(2)
	}
	mode := os.Args[1]
	o := &options{}
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	fs.StringVar(&o.endpoints, "endpoints", "127.0.0.1:2379", "client endpoints, comma-separated")
	fs.IntVar(&o.clients, "clients", 1, "concurrent clients, one request in flight each")
	fs.IntVar(&o.conns, "conns", 1, "client connections (clientv3.Client), clients spread over them")
	fs.Uint64Var(&o.total, "total", 10000, "operations at most")
	fs.DurationVar(&o.duration, "duration", 60*time.Second, "time at most")
	fs.DurationVar(&o.requestTimeout, "request-timeout", 10*time.Second, "deadline of each request")
	fs.Uint64Var(&o.keySpace, "key-space-size", 100000, "distinct keys, picked uniformly at random")
	fs.IntVar(&o.keySize, "key-size", 8, "key size in bytes")
	fs.IntVar(&o.valSize, "val-size", 256, "value size in bytes (random, new for every put)")
	fs.StringVar(&o.prefix, "prefix", "", "prefix of every key")
	fs.StringVar(&o.consistency, "consistency", "l", "range: l (linearizable) or s (serializable)")
	fs.IntVar(&o.watchers, "watchers", 100, "watch: watchers on the prefix")
	fs.IntVar(&o.streams, "streams", 10, "watch: watch streams the watchers are spread over")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 5*time.Second, "watch: wait this long after the last put for missing events")
	_ = fs.Parse(os.Args[2:])
	if mode == "range" {
		mode = "range-" + o.consistency
	}
	if o.clients < 1 || o.conns < 1 || o.keySpace < 1 || o.duration <= 0 ||
		(o.consistency != "l" && o.consistency != "s") || o.watchers < 1 || o.streams < 1 {
		fail(mode, o, "--clients, --conns, --key-space-size, --watchers and --streams must be at least 1, --duration positive, --consistency l or s")
	}
	clients, err := connect(o)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	if err != nil {
		fail(mode, o, err.Error())
	}
	var r report
	if mode == "watch" {
		r = watch(o, clients)
	} else {
		r = run(mode, o, clients)
	}
	emit(r)
	for _, c := range clients {
		c.Close()
	}
	if r.Errors.Total > 0 {
		os.Exit(1)
	}
}

func run(mode string, o *options, clients []*clientv3.Client) report {
	keys := newKeyGen(o.prefix, o.keySize, o.keySpace)
	writes := mode == "put"
	workers := make([]*worker, o.clients)
	for i := range workers {
		workers[i] = newWorker(writes)
	}
	start := time.Now()
	p := &pacer{total: o.total, deadline: start.Add(o.duration)}
	var wg sync.WaitGroup
	for i := 0; i < o.clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := workers[i]
			kv := clients[i%len(clients)].KV
			rng := rand.New(rand.NewSource(0x6b656c736f6e ^ int64(i)))
			value := make([]byte, o.valSize)
			var getOpts []clientv3.OpOption
			if o.consistency == "s" {
				getOpts = append(getOpts, clientv3.WithSerializable())
			}
			for p.take() {
				key := keys.key(uint64(rng.Int63n(int64(o.keySpace))))
				var val string
				if writes {
					rng.Read(value)
					val = string(value)
				}
				ctx, cancel := context.WithTimeout(context.Background(), o.requestTimeout)
				t := time.Now()
				var err error
				if writes {
					_, err = kv.Put(ctx, key, val)
				} else {
					var resp *clientv3.GetResponse
					resp, err = kv.Get(ctx, key, getOpts...)
					if err == nil {
						w.counters["kvs_returned"] += uint64(len(resp.Kvs))
						if len(resp.Kvs) == 0 {
							w.counters["empty_results"]++
						}
					}
				}
				now := time.Now()
				cancel()
				if err != nil {
					w.errors.add(errorText(err), 1)
					continue
				}
				w.lat = append(w.lat, now.Sub(t).Microseconds())
				if writes {
					w.acks = append(w.acks, now.Sub(start).Nanoseconds())
				}
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	r := report{
		Mode: mode, Status: "ok", Conns: o.conns, Clients: o.clients, ElapsedSec: elapsed,
		Unit: "range", Errors: errorCounts{Kinds: map[string]uint64{}},
		Counters: map[string]float64{},
	}
	if writes {
		r.Unit = "put"
	}
	var lat, acks []int64
	for _, w := range workers {
		lat = append(lat, w.lat...)
		acks = append(acks, w.acks...)
		for text, n := range w.errors.Kinds {
			r.Errors.add(text, n)
		}
		for name, n := range w.counters {
			r.Counters[name] += float64(n)
		}
	}
	r.Ops = uint64(len(lat))
	if elapsed > 0 {
		r.OpsPerSec = float64(r.Ops) / elapsed
	}
	r.Latency = summarize(lat)
	if len(acks) >= 2 {
		sort.Slice(acks, func(a, b int) bool { return acks[a] < acks[b] })
		var gap int64
		for i := 1; i < len(acks); i++ {
			if d := acks[i] - acks[i-1]; d > gap {
				gap = d
			}
		}
		stall := float64(gap/1000) / 1000
		r.MaxStallMs = &stall
	}
	return r
}

// epoch is the instant values are stamped against (monotonic, this process only).
var epoch = time.Now()

// watch runs the watch fan-out: watchers created first, then putters, then a drain.
func watch(o *options, clients []*clientv3.Client) report {
	const mode = "watch"
	keys := newKeyGen(o.prefix, o.keySize, o.keySpace)
	streams := o.streams
	if streams > o.watchers {
		streams = o.watchers
	}
	key, watchOpts := o.prefix, []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCreatedNotify()}
	if o.prefix == "" {
		key, watchOpts = "\x00", []clientv3.OpOption{clientv3.WithFromKey(), clientv3.WithCreatedNotify()}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Every watcher of one clientv3.Watcher with the same context shares one gRPC stream.
	var chans []clientv3.WatchChan
	setupDeadline := time.After(connectTimeout)
	for s := 0; s < streams; s++ {
		n := o.watchers / streams
		if s < o.watchers%streams {
			n++
		}
		w := clientv3.NewWatcher(clients[s%len(clients)])
		defer w.Close()
		for j := 0; j < n; j++ {
			ch := w.Watch(ctx, key, watchOpts...)
			select {
			case resp, ok := <-ch:
				if !ok || resp.Canceled || !resp.Created {
					fail(mode, o, fmt.Sprintf("watch %d of stream %d not created: %v", j, s, resp.Err()))
				}
			case <-setupDeadline:
				fail(mode, o, fmt.Sprintf("watchers not all created within %v", connectTimeout))
			}
			chans = append(chans, ch)
		}
	}

	// Readers: one goroutine per watcher.
	var putsOK uint64
	putsDone := make(chan struct{})
	hardStop := time.After(o.duration + o.drainTimeout + o.requestTimeout + 5*time.Second)
	type readerResult struct {
		lat    []int64
		events uint64
		last   time.Time
		errs   []string
	}
	results := make([]readerResult, len(chans))
	var readers sync.WaitGroup
	for i, ch := range chans {
		readers.Add(1)
		go func(i int, ch clientv3.WatchChan) {
			defer readers.Done()
			res := &results[i]
			res.lat = make([]int64, 0, presized)
			done := putsDone
			var drain <-chan time.Time
			target := uint64(math.MaxUint64)
			for {
				select {
				case resp, ok := <-ch:
					if !ok {
						res.errs = append(res.errs, "watch channel closed")
						return
					}
					if err := resp.Err(); err != nil {
						res.errs = append(res.errs, "watch: "+errorText(err))
						return
					}
					now := time.Now()
					for _, ev := range resp.Events {
						if v := ev.Kv.Value; len(v) >= 8 {
							sent := int64(binary.BigEndian.Uint64(v[:8]))
							res.lat = append(res.lat, (now.Sub(epoch).Nanoseconds()-sent)/1000)
						}
					}
					if len(resp.Events) > 0 {
						res.events += uint64(len(resp.Events))
						res.last = now
					}
				case <-done:
					done = nil
					target = atomic.LoadUint64(&putsOK)
					drain = time.After(o.drainTimeout)
				case <-drain:
					return
				case <-hardStop:
					return
				}
				if res.events >= target {
					return
				}
			}
		}(i, ch)
	}

	// Putters.
	start := time.Now()
	p := &pacer{total: o.total, deadline: start.Add(o.duration)}
	putters := make([]*worker, o.clients)
	var wg sync.WaitGroup
	for i := range putters {
		putters[i] = newWorker(true)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := putters[i]
			kv := clients[i%len(clients)].KV
			rng := rand.New(rand.NewSource(0x6b656c736f6e ^ int64(i)))
			value := make([]byte, o.valSize)
			if len(value) < 8 {
				value = make([]byte, 8)
			}
			for p.take() {
				k := keys.key(uint64(rng.Int63n(int64(o.keySpace))))
				rng.Read(value)
				rctx, rcancel := context.WithTimeout(context.Background(), o.requestTimeout)
				t := time.Now()
				binary.BigEndian.PutUint64(value[:8], uint64(t.Sub(epoch).Nanoseconds()))
				_, err := kv.Put(rctx, k, string(value))
				now := time.Now()
				rcancel()
				if err != nil {
					w.errors.add("put: "+errorText(err), 1)
					continue
				}
				w.lat = append(w.lat, now.Sub(t).Microseconds())
				w.acks = append(w.acks, now.Sub(start).Nanoseconds())
			}
		}(i)
	}
	wg.Wait()
	putSecs := time.Since(start).Seconds()
	var putLat []int64
	r := report{
		Mode: mode, Status: "ok", Conns: o.conns, Clients: o.clients, Unit: "event",
		Errors: errorCounts{Kinds: map[string]uint64{}}, Counters: map[string]float64{},
	}
	for _, w := range putters {
		putLat = append(putLat, w.lat...)
		for text, n := range w.errors.Kinds {
			r.Errors.add(text, n)
		}
	}
	puts := uint64(len(putLat))
	atomic.StoreUint64(&putsOK, puts)
	close(putsDone)
	readers.Wait()

	var lat []int64
	var events uint64
	last := start
	for _, res := range results {
		lat = append(lat, res.lat...)
		events += res.events
		if res.last.After(last) {
			last = res.last
		}
		for _, e := range res.errs {
			r.Errors.add(e, 1)
		}
	}
	expected := puts * uint64(len(chans))
	if events < expected {
		r.Errors.add(fmt.Sprintf("events not delivered within %v after the last put", o.drainTimeout), expected-events)
	}
	r.Ops = events
	r.ElapsedSec = last.Sub(start).Seconds()
	if r.ElapsedSec > 0 {
		r.OpsPerSec = float64(events) / r.ElapsedSec
	}
	r.Latency = summarize(lat)
	putSummary := summarize(putLat)
	r.Counters["watchers"] = float64(o.watchers)
	r.Counters["streams"] = float64(streams)
	r.Counters["puts"] = float64(puts)
	r.Counters["events_expected"] = float64(expected)
	if putSecs > 0 {
		r.Counters["puts_per_sec"] = float64(puts) / putSecs
	}
	r.Counters["put_p50_ms"] = putSummary.P50Ms
	r.Counters["put_p99_ms"] = putSummary.P99Ms
	return r
}
