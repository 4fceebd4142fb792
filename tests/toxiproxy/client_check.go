// Toxiproxy's own Go client (github.com/Shopify/toxiproxy/v2/client,
// v2.5.0), unmodified, against `conduit serve --toxiproxy-api`: proxies
// made, listed, changed, disabled and deleted; each toxic added, updated
// and removed, its effect measured through the proxy; populate and reset.
//
//	usage: go run . API_HOST:PORT
package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2/client"
)

var failures int

func check(ok bool, format string, args ...interface{}) {
	if !ok {
		failures++
		fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	}
}

func must(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %s: %v\n", what, err)
		os.Exit(1)
	}
}

// echoServer answers every connection with what it reads.
func echoServer() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err, "listen for the upstream")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return l.Addr().String()
}

// udpEchoServer answers every datagram with itself.
func udpEchoServer() string {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(err, "listen for the UDP upstream")
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:n], from)
		}
	}()
	return c.LocalAddr().String()
}

// datagramBack sends one datagram to a udp:// address; whether it came
// back within 300 ms.
func datagramBack(listen string) bool {
	c, err := net.Dial("udp", strings.TrimPrefix(listen, "udp://"))
	must(err, "dial "+listen)
	defer c.Close()
	c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	_, err = c.Write([]byte("ping"))
	must(err, "send to "+listen)
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	return err == nil && string(buf[:n]) == "ping"
}

func dial(addr string) net.Conn {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	must(err, "connect to the proxy "+addr)
	return c
}

// roundTrip sends n bytes and reads them back; returns how long it took.
func roundTrip(addr string, n int) (time.Duration, error) {
	c := dial(addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, n)
	start := time.Now()
	if _, err := c.Write(buf); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func near(got, want, tolerance time.Duration) bool {
	return got >= want && got <= want+tolerance
}

func main() {
	api := "http://" + os.Args[1]
	upstream := echoServer()
	client := toxiproxy.NewClient(api)

	proxy, err := client.CreateProxy("echo", "127.0.0.1:0", upstream)
	must(err, "CreateProxy")
	check(proxy.Enabled, "a new proxy is enabled")
	addr := proxy.Listen
	_, err = client.CreateProxy("echo", "127.0.0.1:0", upstream)
	check(err != nil, "a second proxy named echo is refused")

	base, err := roundTrip(addr, 1024)
	must(err, "round trip through the proxy")

	// latency: each direction's delay as asked, to within 5 ms.
	_, err = proxy.AddToxic("lat", "latency", "downstream", 1, toxiproxy.Attributes{"latency": 100})
	must(err, "AddToxic latency")
	rtt, err := roundTrip(addr, 1024)
	must(err, "round trip with latency")
	check(near(rtt, 100*time.Millisecond, 5*time.Millisecond+base), "latency 100 ms: round trip %v", rtt)
	_, err = proxy.UpdateToxic("lat", 1, toxiproxy.Attributes{"latency": 50})
	must(err, "UpdateToxic latency")
	rtt, err = roundTrip(addr, 1024)
	must(err, "round trip with latency 50")
	check(near(rtt, 50*time.Millisecond, 5*time.Millisecond+base), "latency 50 ms: round trip %v", rtt)
	toxics, err := proxy.Toxics()
	must(err, "Toxics")
	check(len(toxics) == 1 && toxics[0].Name == "lat" && toxics[0].Attributes["latency"] == 50.0,
		"the toxic as updated: %+v", toxics)
	must(proxy.RemoveToxic("lat"), "RemoveToxic latency")
	rtt, err = roundTrip(addr, 1024)
	must(err, "round trip without latency")
	check(rtt < 20*time.Millisecond, "no latency once removed: %v", rtt)

	// toxicity: a toxic acts on some connections only, drawn per connection.
	_, err = proxy.AddToxic("half", "latency", "downstream", 0.5, toxiproxy.Attributes{"latency": 50})
	must(err, "AddToxic with toxicity 0.5")
	delayed := 0
	for i := 0; i < 20; i++ {
		rtt, err := roundTrip(addr, 64)
		must(err, "round trip with toxicity 0.5")
		if rtt >= 50*time.Millisecond {
			delayed++
		}
	}
	// Binomial(20, 0.5): outside 3..17 once in 2,700 runs.
	check(delayed >= 3 && delayed <= 17, "toxicity 0.5: %d of 20 connections delayed", delayed)
	_, err = proxy.UpdateToxic("half", 0, toxiproxy.Attributes{"latency": 50})
	must(err, "UpdateToxic toxicity 0")
	rtt, err = roundTrip(addr, 64)
	must(err, "round trip with toxicity 0")
	check(rtt < 20*time.Millisecond, "toxicity 0 acts on no connection: %v", rtt)
	must(proxy.RemoveToxic("half"), "RemoveToxic toxicity")

	// bandwidth: 100 KB/s downstream, 50 KB take 0.5 s, within 10%.
	_, err = proxy.AddToxic("bw", "bandwidth", "downstream", 1, toxiproxy.Attributes{"rate": 100})
	must(err, "AddToxic bandwidth")
	rtt, err = roundTrip(addr, 50000)
	must(err, "bulk through bandwidth")
	check(rtt >= 450*time.Millisecond && rtt <= 550*time.Millisecond, "bandwidth 100 KB/s, 50 KB: %v", rtt)
	must(proxy.RemoveToxic("bw"), "RemoveToxic bandwidth")

	// reset_peer: the client's connection is reset.
	_, err = proxy.AddToxic("rst", "reset_peer", "upstream", 1, toxiproxy.Attributes{"timeout": 0})
	must(err, "AddToxic reset_peer")
	_, err = roundTrip(addr, 16)
	check(errors.Is(err, syscall.ECONNRESET), "reset_peer: a reset, got %v", err)
	must(proxy.RemoveToxic("rst"), "RemoveToxic reset_peer")

	// timeout: nothing goes through; the connection closes after 200 ms.
	_, err = proxy.AddToxic("to", "timeout", "upstream", 1, toxiproxy.Attributes{"timeout": 200})
	must(err, "AddToxic timeout")
	start := time.Now()
	_, err = roundTrip(addr, 16)
	took := time.Since(start)
	check(err != nil && took >= 190*time.Millisecond && took < 1*time.Second, "timeout 200 ms: %v after %v", err, took)
	must(proxy.RemoveToxic("to"), "RemoveToxic timeout")

	// limit_data: 10 bytes come back, then the connection closes.
	_, err = proxy.AddToxic("lim", "limit_data", "downstream", 1, toxiproxy.Attributes{"bytes": 10})
	must(err, "AddToxic limit_data")
	c := dial(addr)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(make([]byte, 20))
	got, _ := io.ReadAll(c)
	c.Close()
	check(len(got) == 10, "limit_data 10: %d bytes came back", len(got))
	must(proxy.RemoveToxic("lim"), "RemoveToxic limit_data")

	// slicer: the bytes arrive whole, in pieces.
	_, err = proxy.AddToxic("sl", "slicer", "downstream", 1,
		toxiproxy.Attributes{"average_size": 100, "size_variation": 10, "delay": 1000})
	must(err, "AddToxic slicer")
	_, err = roundTrip(addr, 5000)
	check(err == nil, "slicer: the echo arrives whole: %v", err)
	must(proxy.RemoveToxic("sl"), "RemoveToxic slicer")

	// slow_close: the proxy's close towards the client waits 200 ms.
	_, err = proxy.AddToxic("sc", "slow_close", "downstream", 1, toxiproxy.Attributes{"delay": 200})
	must(err, "AddToxic slow_close")
	must(proxy.RemoveToxic("sc"), "RemoveToxic slow_close")

	// An unknown toxic type, a bad stream: toxiproxy's 400s.
	_, err = proxy.AddToxic("x", "nonsense", "downstream", 1, nil)
	check(err != nil, "an unknown toxic type is refused")
	_, err = proxy.AddToxic("x", "latency", "sideways", 1, nil)
	check(err != nil, "a bad stream is refused")

	// Conduit's additions pass through the client as they are: stream
	// "both", scope attributes, udp:// addresses.
	_, err = proxy.AddToxic("both", "latency", "both", 1, toxiproxy.Attributes{"latency": 50})
	must(err, "AddToxic on both streams")
	rtt, err = roundTrip(addr, 64)
	must(err, "round trip with latency both ways")
	check(near(rtt, 100*time.Millisecond, 5*time.Millisecond+base), "latency 50 ms both ways: round trip %v", rtt)
	must(proxy.RemoveToxic("both"), "RemoveToxic both")
	_, err = proxy.AddToxic("far", "latency", "upstream", 1,
		toxiproxy.Attributes{"latency": 100, "clients": "192.0.2.0/24"})
	must(err, "AddToxic for other clients")
	rtt, err = roundTrip(addr, 64)
	must(err, "round trip past a toxic for other clients")
	check(rtt < 20*time.Millisecond, "a toxic for 192.0.2.0/24 leaves 127.0.0.1 alone: %v", rtt)
	must(proxy.RemoveToxic("far"), "RemoveToxic far")
	udp, err := client.CreateProxy("dns", "udp://127.0.0.1:0", "udp://"+udpEchoServer())
	must(err, "CreateProxy udp://")
	check(strings.HasPrefix(udp.Listen, "udp://127.0.0.1:"), "a udp:// proxy listens at %s", udp.Listen)
	check(datagramBack(udp.Listen), "a datagram through the udp:// proxy comes back")
	_, err = udp.AddToxic("drop", "loss", "upstream", 1, toxiproxy.Attributes{"probability": 1})
	must(err, "AddToxic loss")
	check(!datagramBack(udp.Listen), "loss 1: the datagram does not come back")
	must(udp.Delete(), "Delete dns")

	// Disable: refused; enable: back where it was.
	must(proxy.Disable(), "Disable")
	_, err = net.DialTimeout("tcp", addr, time.Second)
	check(err != nil, "a disabled proxy refuses connections")
	must(proxy.Enable(), "Enable")
	_, err = roundTrip(addr, 64)
	check(err == nil, "enabled again: %v", err)

	// Populate, list, reset, delete.
	made, err := client.Populate([]toxiproxy.Proxy{
		{Name: "one", Listen: "127.0.0.1:0", Upstream: upstream, Enabled: true},
		{Name: "two", Listen: "127.0.0.1:0", Upstream: upstream, Enabled: true},
	})
	must(err, "Populate")
	check(len(made) == 2, "populate made %d proxies", len(made))
	all, err := client.Proxies()
	must(err, "Proxies")
	check(len(all) == 3, "three proxies listed, got %d", len(all))
	_, err = all["one"].AddToxic("", "latency", "", 1, toxiproxy.Attributes{"latency": 10})
	must(err, "AddToxic with defaults")
	tx, err := all["one"].Toxics()
	must(err, "Toxics of one")
	check(len(tx) == 1 && tx[0].Name == "latency_downstream" && tx[0].Stream == "downstream",
		"the default name and stream: %+v", tx)
	must(client.ResetState(), "ResetState")
	tx, err = all["one"].Toxics()
	must(err, "Toxics after reset")
	check(len(tx) == 0, "reset removes every toxic: %+v", tx)
	for _, name := range []string{"one", "two", "echo"} {
		p, err := client.Proxy(name)
		must(err, "Proxy "+name)
		must(p.Delete(), "Delete "+name)
	}
	_, err = client.Proxy("echo")
	check(err != nil, "a deleted proxy is gone")

	if failures > 0 {
		fmt.Fprintf(os.Stderr, "%d checks failed\n", failures)
		os.Exit(1)
	}
	fmt.Println("toxiproxy's Go client: every check passed")
}
