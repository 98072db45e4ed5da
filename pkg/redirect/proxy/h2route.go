package proxy

// Per-stream routing for HTTP/2: each stream the front (h2.go) accepts is
// matched against the routes on its own and forwarded, full duplex, over a
// pooled HTTP/2 connection to its backend. Backends are reached with
// prior-knowledge cleartext HTTP/2, which is what gRPC servers and h2c
// services speak; connections are dialled through Config.Dial, because the
// agent dials from inside the pod's network namespace.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

//lint:file-ignore SA1019 x/net/http2 on purpose: net/http cannot serve one accepted connection (ServeConn), and its transport dials per request while none is up (see newUpstreamTransport)

// upstreamPing is how long an upstream connection may stay silent before it
// is probed with a PING: a backend pod that vanished without a FIN must not
// hold streams forever.
const upstreamPing = 30 * time.Second

// newUpstreamTransport returns the pool of upstream connections. It is
// x/net's transport rather than net/http's, although deprecated, because
// net/http dials a connection per request while none is up yet, so a burst
// of streams to a backend opens as many connections; x/net's shares one
// dial per address and adds connections only when a backend's stream limit
// is reached.
func newUpstreamTransport(p *Proxy) *http2.Transport {
	return &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return p.dialUpstream(ctx, network, addr) // cleartext: "TLS" is only the hook's name
		},
		// Bodies pass through as the backend encoded them, and the
		// transport must not ask for gzip on the client's behalf.
		DisableCompression: true,
		IdleConnTimeout:    p.cfg.IdleTimeout,
		ReadIdleTimeout:    upstreamPing,
	}
}

// dialError marks a failure to reach a backend at all, the one failure
// after which a stream can still go to the app: nothing was sent.
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string { return fmt.Sprintf("dial %s: %v", e.addr, e.err) }
func (e *dialError) Unwrap() error { return e.err }

func (p *Proxy) dialUpstream(ctx context.Context, network, addr string) (net.Conn, error) {
	// The transport may share one dial among the streams waiting for a
	// connection to addr, so one stream's cancellation must not fail the
	// others: the dial is bounded by DialTimeout alone.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.DialTimeout)
	defer cancel()
	c, err := p.cfg.Dial(ctx, network, addr)
	if err != nil {
		return nil, &dialError{addr: addr, err: err}
	}
	if !p.track(c, nil) {
		c.Close()
		return nil, &dialError{addr: addr, err: net.ErrClosed}
	}
	return &trackedConn{Conn: c, p: p}, nil
}

// trackedConn is an upstream connection owned by the transport but known
// to the proxy, so that Close reaches it.
type trackedConn struct {
	net.Conn
	p    *Proxy
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.p.forget(c.Conn) })
	return err
}

// serveStream routes and forwards one HTTP/2 request; it is the handler of
// every stream of every HTTP/2 client connection.
func (p *Proxy) serveStream(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	intercept, outcome, addr := "", OutcomeUnmatched, p.cfg.App
	src, _ := netip.ParseAddrPort(r.RemoteAddr) // set from the client connection
	if rt := p.route(h2Request{r}, src.Addr().Unmap()); rt != nil {
		intercept, outcome = rt.Intercept, OutcomeFallback
		if dest, ok := p.pick(rt); ok {
			outcome, addr = OutcomeMatched, dest
		}
	}
	defer func() { p.observe(intercept, outcome, start) }()

	body := r.Body
	var held *heldBody
	if addr != p.cfg.App && r.ContentLength != 0 {
		held = &heldBody{rc: r.Body}
		body = held
	}
	res, err := p.roundTrip(r, addr, body)
	var de *dialError
	if err != nil && addr != p.cfg.App && errors.As(err, &de) && r.Context().Err() == nil &&
		(held == nil || !held.read.Load()) {
		p.log.Info("destination unreachable, falling back to the app",
			"intercept", intercept, "destination", addr, "err", err)
		p.markDown(addr)
		outcome, addr = OutcomeFallback, p.cfg.App
		res, err = p.roundTrip(r, addr, r.Body)
	}
	if err != nil {
		switch {
		case r.Context().Err() != nil:
			// The client reset the stream or left: nobody to answer.
		case errors.As(err, &de):
			p.log.Warn("upstream unreachable", "upstream", addr, "err", err)
			w.WriteHeader(http.StatusBadGateway)
		case errors.As(err, new(http2.StreamError)):
			// The backend reset the stream before answering: so
			// does the proxy, to the client (see forwardResponse).
			p.log.Debug("upstream reset the stream", "upstream", addr, "err", err)
			panic(http.ErrAbortHandler)
		default:
			p.log.Debug("upstream request failed", "upstream", addr, "err", err)
			w.WriteHeader(http.StatusBadGateway)
		}
		return
	}
	defer res.Body.Close() // before the response ends, this resets the upstream stream
	p.forwardResponse(w, r, res)
}

// roundTrip sends r to addr over a pooled HTTP/2 connection and returns
// once the response head has arrived; the body goes up concurrently.
func (p *Proxy) roundTrip(r *http.Request, addr string, body io.ReadCloser) (*http.Response, error) {
	out := &http.Request{
		Method:        r.Method,
		URL:           upstreamURL(r, addr),
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        upstreamHeader(r.Header),
		Host:          r.Host,
		Body:          body,
		ContentLength: r.ContentLength,
		Trailer:       r.Trailer,
	}
	if r.ContentLength == 0 {
		out.Body = http.NoBody // END_STREAM on the headers, as the client sent it
	}
	return p.h2.up.RoundTrip(out.WithContext(r.Context()))
}

// forwardResponse copies the response head, then the body with a flush
// after every read so that streams (gRPC server streaming, bidi, SSE) flow
// message by message, then the trailers.
func (p *Proxy) forwardResponse(w http.ResponseWriter, r *http.Request, res *http.Response) {
	h := w.Header()
	for k, vv := range res.Header {
		if !hopByHop(k) && k != "Trailer" {
			h[k] = vv
		}
	}
	// The server would make these up when absent; a nil value stops it,
	// so the client sees the backend's head and nothing else.
	for _, k := range [...]string{"Content-Type", "Content-Length", "Date"} {
		if _, ok := res.Header[k]; !ok {
			h[k] = nil
		}
	}
	w.WriteHeader(res.StatusCode)
	rc := http.NewResponseController(w)
	rc.EnableFullDuplex() // HTTP/2 always is; harmless
	// A response with no body at all (a gRPC error is headers only, with
	// END_STREAM) must stay that way: flushing now would split it into
	// headers and an empty end, which a gRPC client reads as a missing
	// status. Any other response's head goes out at once.
	if res.ContentLength != 0 {
		if err := rc.Flush(); err != nil {
			return
		}
	}
	bp := p.h2.bufs.Get().(*[]byte)
	defer p.h2.bufs.Put(bp)
	buf := *bp
	for {
		n, err := res.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return // the client stream is gone; returning resets the upstream one
			}
			if werr := rc.Flush(); werr != nil {
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if r.Context().Err() == nil {
				p.log.Debug("upstream stream failed", "err", err)
				// The one way to reset a client stream from a
				// handler: the server answers the panic with
				// RST_STREAM and keeps the connection.
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
	for k, vv := range res.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
}

// heldBody lets a stream whose destination cannot be dialled go to the app
// instead: the transport closes a request's body on every error, and a
// server request body once closed cannot be read again, so until the
// transport has read from it, Close is ignored. The server closes the body
// itself when the handler returns.
type heldBody struct {
	rc   io.ReadCloser
	read atomic.Bool
}

func (b *heldBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.rc.Read(p)
}

func (b *heldBody) Close() error {
	if b.read.Load() {
		return b.rc.Close()
	}
	return nil
}

// upstreamURL addresses addr with the client's :path unchanged.
func upstreamURL(r *http.Request, addr string) *url.URL {
	u := &url.URL{Scheme: "http", Host: addr}
	uri := r.RequestURI
	if uri == "*" || strings.HasPrefix(uri, "/") && !strings.HasPrefix(uri, "//") {
		u.Opaque = uri // sent as is, query included
		return u
	}
	// Absolute form (possible on an h2c Upgrade request) and oddities.
	u.Path, u.RawPath, u.RawQuery = r.URL.Path, r.URL.RawPath, r.URL.RawQuery
	return u
}

// upstreamHeader is h without the fields that describe the client's
// connection rather than the request (RFC 9113 8.2.2), which only an h2c
// Upgrade request carries. The values are shared, not copied: nobody
// writes to them.
func upstreamHeader(h http.Header) http.Header {
	out := make(http.Header, len(h)+1)
	for k, vv := range h {
		if hopByHop(k) || k == "Trailer" { // the transport declares r.Trailer itself
			continue
		}
		out[k] = vv
	}
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			delete(out, textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name)))
		}
	}
	if te, ok := h["Te"]; ok {
		delete(out, "Te")
		if hasToken(strings.Join(te, ","), "trailers") {
			out["Te"] = []string{"trailers"} // gRPC requires it; the only TE HTTP/2 allows
		}
	}
	if _, ok := out["User-Agent"]; !ok {
		out["User-Agent"] = []string{""} // else the transport adds its own
	}
	return out
}

func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Http2-Settings":
		return true
	}
	return false
}

// h2Request is what the matcher sees of an HTTP/2 request.
type h2Request struct{ r *http.Request }

func (q h2Request) Method() string { return q.r.Method }

// Path is the :path without its query, as for HTTP/1 (a gRPC method is
// "/package.Service/Method").
func (q h2Request) Path() string {
	uri := q.r.RequestURI
	if strings.HasPrefix(uri, "/") {
		if i := strings.IndexAny(uri, "?#"); i >= 0 {
			return uri[:i]
		}
		return uri
	}
	if uri == "*" {
		return "*"
	}
	if p := q.r.URL.EscapedPath(); p != "" {
		return p
	}
	return "/"
}

// Header answers for :authority as "host", so a host rule works as in
// HTTP/1; gRPC metadata are ordinary header fields.
func (q h2Request) Header(name string) (string, bool) {
	if strings.EqualFold(name, "host") {
		return q.r.Host, q.r.Host != ""
	}
	vv, ok := q.r.Header[textproto.CanonicalMIMEHeaderKey(name)]
	switch {
	case !ok:
		return "", false
	case len(vv) == 1:
		return vv[0], true
	}
	return strings.Join(vv, ", "), true
}
