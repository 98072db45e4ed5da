package kubeauth

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxCacheEntries bounds the review cache: a flood of distinct valid
// tokens costs reviews, not memory.
const maxCacheEntries = 4096

// review asks the API server who holds token, for audiences (nil: the API
// server's own), reusing a recent successful answer.
func (a *Authenticator) review(ctx context.Context, token string, audiences []string) (authnv1.UserInfo, error) {
	key := newCacheKey(token, audiences)
	if u, ok := a.cache.get(key); ok {
		return u, nil
	}
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences}}
	res, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, tr, metav1.CreateOptions{})
	if err != nil {
		a.log.Warn("TokenReview failed", "err", err)
		if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
			return authnv1.UserInfo{}, status.Error(codes.Internal,
				"the controller cannot verify tokens: it may not create tokenreviews.authentication.k8s.io")
		}
		return authnv1.UserInfo{}, status.Errorf(codes.Unavailable, "cannot verify the token: TokenReview: %v", err)
	}
	st := res.Status
	if !st.Authenticated {
		msg := "the API server rejected the token"
		if st.Error != "" {
			msg += ": " + st.Error
		}
		if len(audiences) > 0 {
			msg += fmt.Sprintf(" (this service wants a token for audience %q)", strings.Join(audiences, ","))
		}
		return authnv1.UserInfo{}, status.Error(codes.Unauthenticated, msg)
	}
	// An authenticator that ignores audiences answers with none: the
	// token would then be accepted whatever it was issued for.
	for _, aud := range audiences {
		if !slices.Contains(st.Audiences, aud) {
			a.log.Warn("TokenReview answered without the requested audience", "want", aud, "got", st.Audiences)
			return authnv1.UserInfo{}, status.Errorf(codes.Unauthenticated, "token not valid for audience %q", aud)
		}
	}
	if st.User.Username == "" {
		return authnv1.UserInfo{}, status.Error(codes.Unauthenticated, "token review named no user")
	}
	a.cache.put(key, st.User)
	return st.User, nil
}

// cacheKey is a token's digest and the audiences it was reviewed for: the
// same token can be valid for one and not the other.
type cacheKey struct {
	sum       [sha256.Size]byte
	audiences string
}

func newCacheKey(token string, audiences []string) cacheKey {
	return cacheKey{sum: sha256.Sum256([]byte(token)), audiences: strings.Join(audiences, "\x00")}
}

type cacheEntry struct {
	user    authnv1.UserInfo
	expires time.Time
}

// reviewCache keeps successful reviews for ttl, at most max of them.
type reviewCache struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu      sync.Mutex
	entries map[cacheKey]cacheEntry
}

func newReviewCache(ttl time.Duration, max int, now func() time.Time) *reviewCache {
	return &reviewCache{ttl: ttl, max: max, now: now, entries: make(map[cacheKey]cacheEntry)}
}

func (c *reviewCache) get(k cacheKey) (authnv1.UserInfo, bool) {
	if c.ttl <= 0 {
		return authnv1.UserInfo{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok {
		return authnv1.UserInfo{}, false
	}
	if !c.now().Before(e.expires) {
		delete(c.entries, k)
		return authnv1.UserInfo{}, false
	}
	return *e.user.DeepCopy(), true
}

func (c *reviewCache) put(k cacheKey, u authnv1.UserInfo) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if _, ok := c.entries[k]; !ok && len(c.entries) >= c.max {
		for key, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, key)
			}
		}
		// Still full: drop arbitrary entries (map order); they will be
		// reviewed again.
		for key := range c.entries {
			if len(c.entries) < c.max {
				break
			}
			delete(c.entries, key)
		}
	}
	c.entries[k] = cacheEntry{user: *u.DeepCopy(), expires: now.Add(c.ttl)}
}

func (c *reviewCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
