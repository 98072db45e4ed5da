package echo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func get(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestIdentifies(t *testing.T) {
	srv := httptest.NewServer(NewHandler("pod-a"))
	defer srv.Close()
	for _, path := range []string{"/", "/any/path?q=1", "/healthz"} {
		resp, body := get(t, srv.Client(), srv.URL+path)
		if resp.StatusCode != http.StatusOK || resp.Header.Get(PodHeader) != "pod-a" {
			t.Errorf("%s: %s, %s=%q", path, resp.Status, PodHeader, resp.Header.Get(PodHeader))
		}
		want := "pod-a\n"
		if path == "/healthz" {
			want = "ok\n"
		}
		if string(body) != want {
			t.Errorf("%s: body %q, want %q", path, body, want)
		}
	}
	// Errors identify the pod too.
	resp, _ := get(t, srv.Client(), srv.URL+"/download?bytes=x")
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(PodHeader) != "pod-a" {
		t.Errorf("bad download: %s, %s=%q", resp.Status, PodHeader, resp.Header.Get(PodHeader))
	}
}

func TestUpload(t *testing.T) {
	srv := httptest.NewServer(NewHandler("pod-u"))
	defer srv.Close()
	data, err := io.ReadAll(io.LimitReader(Stream(7), 3<<20+17))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	for _, chunked := range []bool{false, true} {
		var body io.Reader = bytes.NewReader(data)
		if chunked {
			// Hiding the length makes net/http send the body chunked.
			body = io.MultiReader(body)
		}
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/upload", body)
		if err != nil {
			t.Fatal(err)
		}
		if chunked && req.ContentLength != 0 {
			t.Fatalf("request would not be chunked (length %d)", req.ContentLength)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got UploadResult
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := UploadResult{Pod: "pod-u", Bytes: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
		if got != want || resp.Header.Get(PodHeader) != "pod-u" {
			t.Errorf("chunked=%v: got %+v, want %+v", chunked, got, want)
		}
	}
}

func TestDownload(t *testing.T) {
	srv := httptest.NewServer(NewHandler("pod-d"))
	defer srv.Close()
	for _, n := range []int64{0, 1, 100, 5<<20 + 3} {
		resp, body := get(t, srv.Client(), srv.URL+"/download?bytes="+strconv.FormatInt(n, 10)+"&seed=42")
		if resp.StatusCode != http.StatusOK || resp.Header.Get(PodHeader) != "pod-d" {
			t.Fatalf("n=%d: %s", n, resp.Status)
		}
		if resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
			t.Errorf("n=%d: not chunked: length %d, encoding %v", n, resp.ContentLength, resp.TransferEncoding)
		}
		want, _ := io.ReadAll(io.LimitReader(Stream(42), n))
		if !bytes.Equal(body, want) {
			t.Errorf("n=%d: body differs from Stream(42) (got %d bytes)", n, len(body))
		}
	}
	for _, q := range []string{"", "bytes=-1", "bytes=x", "bytes=1&seed=-3"} {
		resp, _ := get(t, srv.Client(), srv.URL+"/download?"+q)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: %s, want 400", q, resp.Status)
		}
	}
}

func TestStream(t *testing.T) {
	a, _ := io.ReadAll(io.LimitReader(Stream(1), 1000))
	b, _ := io.ReadAll(io.LimitReader(Stream(1), 1000))
	c, _ := io.ReadAll(io.LimitReader(Stream(2), 1000))
	if !bytes.Equal(a, b) {
		t.Error("same seed, different bytes")
	}
	if bytes.Equal(a, c) {
		t.Error("different seeds, same bytes")
	}
	// Reading in odd pieces gives the same bytes as reading at once.
	s := Stream(1)
	var pieces []byte
	for _, n := range []int{1, 7, 300, 692} {
		p := make([]byte, n)
		if _, err := io.ReadFull(s, p); err != nil {
			t.Fatal(err)
		}
		pieces = append(pieces, p...)
	}
	if !bytes.Equal(a, pieces) {
		t.Error("stream depends on read sizes")
	}
}

func TestWebSocket(t *testing.T) {
	srv := httptest.NewServer(NewHandler("pod-w"))
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
	c, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp.Header.Get(PodHeader) != "pod-w" {
		t.Errorf("upgrade response %s=%q", PodHeader, resp.Header.Get(PodHeader))
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	msgs := []struct {
		typ  int
		data []byte
	}{
		{websocket.TextMessage, []byte("hello")},
		{websocket.BinaryMessage, []byte{0, 1, 2, 255}},
		{websocket.TextMessage, bytes.Repeat([]byte("x"), 100000)},
	}
	for _, m := range msgs {
		if err := c.WriteMessage(m.typ, m.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		want := append([]byte("pod-w: "), m.data...)
		if typ != m.typ || !bytes.Equal(got, want) {
			t.Errorf("echo of %d-byte message: type %d, %d bytes; want type %d, %d bytes", len(m.data), typ, len(got), m.typ, len(want))
		}
	}
	// A plain GET of /ws is refused, still naming the pod.
	r, _ := get(t, srv.Client(), srv.URL+"/ws")
	if r.StatusCode != http.StatusBadRequest || r.Header.Get(PodHeader) != "pod-w" {
		t.Errorf("plain GET /ws: %s %s=%q", r.Status, PodHeader, r.Header.Get(PodHeader))
	}
}

// NewServer speaks HTTP/1.1 and prior-knowledge h2c on one port.
func TestServerH2C(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer("pod-h", ln.Addr().String())
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	url := "http://" + ln.Addr().String() + "/"

	h1 := &http.Client{Transport: &http.Transport{}}
	resp, body := get(t, h1, url)
	if resp.ProtoMajor != 1 || string(body) != "pod-h\n" {
		t.Errorf("HTTP/1: %s %q", resp.Proto, body)
	}

	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: &http.Transport{Protocols: p}}
	resp, body = get(t, h2, url)
	if resp.ProtoMajor != 2 || string(body) != "pod-h\n" || resp.Header.Get(PodHeader) != "pod-h" {
		t.Errorf("h2c: %s %q", resp.Proto, body)
	}
	// Download over HTTP/2 has the same bytes.
	resp, body = get(t, h2, url+"download?bytes=70000&seed=9")
	want, _ := io.ReadAll(io.LimitReader(Stream(9), 70000))
	if resp.ProtoMajor != 2 || !bytes.Equal(body, want) {
		t.Errorf("h2c download: %s, %d bytes", resp.Proto, len(body))
	}
}

func TestChain(t *testing.T) {
	// api records what the call it received carried.
	var gotSession, gotBaggage string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotSession, gotBaggage = r.Header.Get("x-detour-session"), r.Header.Get("baggage")
		NewHandler("api-1").ServeHTTP(w, r)
	}))
	defer api.Close()
	for _, tc := range []struct {
		name      string
		propagate bool
		wantSess  string
	}{
		{"no propagation", false, ""},
		{"propagation", true, "pr-7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			web := httptest.NewServer(NewChainHandler(Options{Name: "web-1", Call: api.URL, Propagate: tc.propagate}))
			defer web.Close()
			req, _ := http.NewRequest(http.MethodGet, web.URL+"/chain", nil)
			req.Header.Set("x-detour-session", "pr-7")
			req.Header.Set("baggage", "detour-session=pr-7")
			resp, err := web.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "web-1 -> api-1\n" || resp.Header.Get(ChainHeader) != "web-1 -> api-1" {
				t.Errorf("chain: body %q, header %q", body, resp.Header.Get(ChainHeader))
			}
			if gotSession != tc.wantSess {
				t.Errorf("api saw x-detour-session %q, want %q", gotSession, tc.wantSess)
			}
			if wantBag := map[bool]string{true: "detour-session=pr-7"}[tc.propagate]; gotBaggage != wantBag {
				t.Errorf("api saw baggage %q, want %q", gotBaggage, wantBag)
			}
		})
	}
	// The end of a chain answers its own name; Chain reads the header.
	got, err := Chain(api.Client(), api.URL+"/chain", "")
	if err != nil || got != "api-1" {
		t.Errorf("Chain(end) = %q, %v", got, err)
	}
	// A call that fails says where the chain broke.
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	web := httptest.NewServer(NewChainHandler(Options{Name: "web-1", Call: deadURL}))
	defer web.Close()
	if _, err := Chain(web.Client(), web.URL+"/chain", ""); err == nil || !strings.Contains(err.Error(), "web-1 -> (") {
		t.Errorf("Chain through a dead service: %v, want an error naming web-1", err)
	}
}
