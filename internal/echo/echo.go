// Package echo is the lab's test server: an HTTP server that names the pod
// it runs in on every response, so a test or a demo can tell who answered a
// request after Detour has (or has not) detoured it. It also checks body
// integrity both ways (upload hashes, deterministic downloads), echoes
// WebSocket messages, serves gRPC's interop TestService on the same port
// (GRPCService) and, on a port of its own, echoes raw TCP (ServeTCP): the
// traffic shapes the data path must carry intact.
package echo

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// PodHeader names the pod that answered; every response carries it.
const PodHeader = "X-Detour-Pod"

// UploadResult is the JSON answer to POST /upload.
type UploadResult struct {
	Pod    string `json:"pod"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// Stream returns the endless deterministic byte stream that GET /download
// serves for seed, so a client can check a download of any size without
// holding a copy. ChaCha8's output is fixed by its specification, so the
// bytes do not change with the Go version.
func Stream(seed uint64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:8], seed)
	return rand.NewChaCha8(key)
}

// NewHandler serves the echo endpoints as pod name:
//
//	GET  /healthz                  200 "ok"
//	POST /upload                   reads the whole body (chunked or not), answers UploadResult
//	GET  /download?bytes=N&seed=S  N bytes of Stream(S), chunked (no Content-Length)
//	GET  /ws                       WebSocket; echoes each message as "<name>: <message>"
//	any  other path                200 "<name>\n"
//
// and gRPC calls (HTTP/2 with content-type application/grpc*) to
// GRPCService(name), whose responses name the pod in gRPC metadata rather
// than in the HTTP header set here: the same header twice would reach the
// client as two metadata values.
func NewHandler(name string) http.Handler {
	return NewChainHandler(Options{Name: name})
}

// Options configure a handler beyond its name.
type Options struct {
	// Name is the pod name the handler answers with.
	Name string
	// Call is the base URL of the next service in a chain (for example
	// http://api:8080): GET /chain calls Call+"/chain" and answers
	// "NAME -> <its answer>". Empty: /chain answers NAME alone.
	Call string
	// Propagate copies the request's session header (x-detour-session) and
	// baggage header to the call, as an app instrumented for tracing
	// does; without it the call carries neither.
	Propagate bool
	// Client makes the calls; nil: a client that opens a new connection for
	// every call (see chain).
	Client *http.Client
	// Database is a PostgreSQL URL that GET and POST /notes read and write
	// (see NotesTable); empty: they answer 503.
	Database string
}

// ChainHeader carries a /chain answer's chain of pods, as the body does.
const ChainHeader = "X-Detour-Chain"

// NewChainHandler is NewHandler with chain calls:
//
//	GET /chain   "<name>" or, with Options.Call, "<name> -> <next service's chain>"
//	GET /notes   the rows of Options.Database's notes table; POST /notes adds one
func NewChainHandler(o Options) http.Handler {
	name := o.Name
	h := &handler{name: name, opts: o}
	if h.opts.Client == nil {
		// A connection per call: connect-time routes (an environment's
		// fork-to-fork routing) act when a connection is made, and a
		// pooled connection made before a route existed would keep going
		// where it went. Real apps pool; the docs say what that means.
		h.opts.Client = &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		}
	}
	grpcSrv := NewGRPCServer(NewGRPCService(name))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("POST /upload", h.upload)
	mux.HandleFunc("GET /download", h.download)
	mux.HandleFunc("GET /ws", h.ws)
	mux.HandleFunc("GET /chain", h.chain)
	mux.HandleFunc("GET /notes", h.notes)
	mux.HandleFunc("POST /notes", h.notes)
	mux.HandleFunc("/", h.hello)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isGRPC(r.ProtoMajor, r.Header.Get("Content-Type")) {
			// grpc.Server.ServeHTTP is gRPC over net/http's own HTTP/2
			// server: slower than grpc.Server.Serve, but it shares the
			// port with HTTP/1.1 and h2c, as a mesh-fronted service does.
			grpcSrv.ServeHTTP(w, r)
			return
		}
		w.Header().Set(PodHeader, name)
		mux.ServeHTTP(w, r)
	})
}

// NewServer returns a server for NewHandler(name) on addr that speaks
// HTTP/1.1 and, with prior knowledge, cleartext HTTP/2 (h2c) on the same
// port, as gRPC clients and meshes do; gRPC calls among them go to the
// TestService. It uses net/http's own h2c support:
// golang.org/x/net/http2/h2c is deprecated, and the HTTP/1.1 Upgrade route
// to h2c it also offered was deprecated by RFC 9113.
func NewServer(name, addr string) *http.Server {
	return NewChainServer(Options{Name: name}, addr)
}

// NewChainServer is NewServer with chain calls (NewChainHandler).
func NewChainServer(o Options, addr string) *http.Server {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Addr:              addr,
		Handler:           NewChainHandler(o),
		Protocols:         p,
		ReadHeaderTimeout: 10 * time.Second,
	}
}

type handler struct {
	name string
	opts Options
}

// chain answers GET /chain: this pod's name, then, with Options.Call, the
// chain the next service answers.
func (h *handler) chain(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if h.opts.Call == "" {
		w.Header().Set(ChainHeader, h.name)
		io.WriteString(w, h.name+"\n")
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, strings.TrimSuffix(h.opts.Call, "/")+"/chain", nil)
	if err != nil {
		http.Error(w, h.name+" -> (bad --call: "+err.Error()+")", http.StatusInternalServerError)
		return
	}
	if h.opts.Propagate {
		for _, k := range []string{"x-detour-session", "baggage"} {
			if v := r.Header.Values(k); len(v) > 0 {
				req.Header[http.CanonicalHeaderKey(k)] = v
			}
		}
	}
	resp, err := h.opts.Client.Do(req)
	if err != nil {
		http.Error(w, h.name+" -> ("+err.Error()+")", http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil || resp.StatusCode != http.StatusOK {
		http.Error(w, fmt.Sprintf("%s -> (status %d, %v)", h.name, resp.StatusCode, err), http.StatusBadGateway)
		return
	}
	chain := h.name + " -> " + strings.TrimSpace(string(body))
	w.Header().Set(ChainHeader, chain)
	io.WriteString(w, chain+"\n")
}

func (h *handler) hello(w http.ResponseWriter, r *http.Request) {
	// Drain a body so a keep-alive connection stays usable for the next
	// request, which is what a proxy test sends next.
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, h.name+"\n")
}

func (h *handler) upload(w http.ResponseWriter, r *http.Request) {
	sum := sha256.New()
	n, err := io.Copy(sum, r.Body)
	if err != nil {
		http.Error(w, fmt.Sprintf("read body after %d bytes: %v", n, err), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(UploadResult{Pod: h.name, Bytes: n, SHA256: hex.EncodeToString(sum.Sum(nil))})
}

func (h *handler) download(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, err := strconv.ParseInt(q.Get("bytes"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "bytes: want a count >= 0", http.StatusBadRequest)
		return
	}
	var seed uint64
	if s := q.Get("seed"); s != "" {
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			http.Error(w, "seed: want an unsigned integer", http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	// Flushing the header before any body byte keeps net/http from
	// computing a Content-Length for small bodies: the download is always
	// chunked on HTTP/1.1, the harder case for a proxy.
	if err := http.NewResponseController(w).Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return
	}
	_, _ = io.CopyN(w, Stream(seed), n)
}

var upgrader = websocket.Upgrader{
	// A test server on a private lab network: any origin may connect.
	CheckOrigin: func(*http.Request) bool { return true },
}

func (h *handler) ws(w http.ResponseWriter, r *http.Request) {
	// Upgrade writes its own response, so the pod header is passed to it.
	c, err := upgrader.Upgrade(w, r, http.Header{PodHeader: {h.name}})
	if err != nil {
		return // Upgrade has answered with an error status
	}
	defer c.Close()
	prefix := []byte(h.name + ": ")
	for {
		typ, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(typ, append(prefix[:len(prefix):len(prefix)], msg...)); err != nil {
			return
		}
	}
}

// Chain sends GET url (a /chain URL) through hc with the session header
// set unless session is empty, and returns the chain of pods that answered,
// e.g. "web-pr-7 -> api-pr-7"; any status but 200 is an error.
func Chain(hc *http.Client, url, session string) (string, error) {
	resp, err := getAs(hc, url, session)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return resp.Header.Get(ChainHeader), nil
}

// WhoAnswers sends GET url through hc, with header x-detour-session set to
// session unless it is empty, reads the whole response and returns the pod
// that answered (PodHeader); any status but 200 is an error.
func WhoAnswers(hc *http.Client, url, session string) (string, error) {
	resp, err := getAs(hc, url, session)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return resp.Header.Get(PodHeader), nil
}

// getAs sends GET url through hc with header x-detour-session set to
// session unless it is empty.
func getAs(hc *http.Client, url, session string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if session != "" {
		req.Header.Set("x-detour-session", session)
	}
	return hc.Do(req)
}
