package pullthrough

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/pkg/narinfo"
)

// A flight is one download of an upstream NAR file, shared by every
// reader that asks for it while it runs. The bytes go to an unlinked
// temporary file: readers tail it with ReadAt as it grows, and so does
// the upload store's intake, which verifies them. The file is closed when
// the flight and its last reader are done.
type flight struct {
	p    *Store
	a    *upstream.Answer
	size int64 // the file's size, as the narinfo says; -1 when it does not

	// ctx is the download's: cancelled when the intake refuses the
	// bytes, since the rest of them cannot make them good.
	ctx    context.Context
	cancel context.CancelFunc

	file *os.File
	mu   sync.Mutex
	cond sync.Cond
	n    int64 // bytes written
	// dlDone is set when the download ended, dlErr when it failed: the
	// intake reads to the end without waiting for the verdict.
	dlDone bool
	dlErr  error
	done   bool
	err    error // the verdict, once done
	refs   int   // the flight itself and its open readers
}

// open returns a reader of the flight of a's path, starting the flight
// when none runs. withhold readers get the last byte only with a good
// verdict.
func (p *Store) open(ctx context.Context, a *upstream.Answer, withhold bool) (*reader, error) {
	key := narinfo.HashPartOf(a.NarInfo.StorePath)
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.flying[key]; f != nil && string(f.a.NarInfo.NarHash.Digest) == string(a.NarInfo.NarHash.Digest) {
		p.metrics.joined.Inc()
		return f.reader(ctx, withhold), nil
	}
	if err := p.ctx.Err(); err != nil {
		return nil, fmt.Errorf("pull-through is shut down: %w", store.ErrUnavailable)
	}
	file, err := os.CreateTemp(p.tmp, ".pull-")
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", a.NarInfo.StorePath, err)
	}
	os.Remove(file.Name()) // the open descriptors are the file's only names
	f := &flight{p: p, a: a, size: -1, file: file, refs: 1}
	f.cond.L = &f.mu
	f.ctx, f.cancel = context.WithCancel(p.ctx)
	if _, _, size, ok := fileOf(a.NarInfo); ok {
		f.size = size
	}
	r := f.reader(ctx, withhold)
	p.flying[key] = f
	p.wg.Add(1)
	p.metrics.flights.Inc()
	go f.run(key)
	return r, nil
}

// run downloads, verifies and keeps the NAR, then tells the readers.
func (f *flight) run(key string) {
	defer f.p.wg.Done()
	defer f.cancel()
	start := time.Now()
	err := f.pull()
	u := f.a.Upstream
	f.p.metrics.result(u.Name, err, time.Since(start), f.n)
	var b *badNAR
	switch {
	case err == nil || f.p.ctx.Err() != nil:
	case errors.As(err, &b):
		f.p.set.Bad(u, f.a.NarInfo.StorePath, b.reason, err)
	default:
		f.p.log.Warn("pull-through failed", "upstream", u.Name, "path", f.a.NarInfo.StorePath, "err", err)
	}
	// Out of the map first, then the verdict: a reader that comes after
	// it finds the kept path (or starts a new flight after a failure).
	f.p.mu.Lock()
	if f.p.flying[key] == f { // not a newer flight of another NAR of the path
		delete(f.p.flying, key)
	}
	f.p.mu.Unlock()
	f.p.metrics.flights.Dec()
	f.mu.Lock()
	f.done, f.err = true, err
	f.cond.Broadcast()
	f.mu.Unlock()
	f.release()
}

// badNAR is a pull refused for what the upstream sent.
type badNAR struct {
	reason string // the metric's label, an upstream.Reason
	err    error
}

func (b *badNAR) Error() string { return b.err.Error() }
func (b *badNAR) Unwrap() error { return b.err }

func bad(reason, format string, a ...any) error {
	return &badNAR{reason: reason, err: fmt.Errorf(format, a...)}
}

// pull is the flight's work: the download into the file, alongside the
// intake reading it back (once the name is known, which needs the file's
// hash), then the comparison of what the intake computed with what the
// upstream signed, and the adoption.
func (f *flight) pull() error {
	ni := f.a.NarInfo
	comp, fileHash, _, named := fileOf(ni)
	if comp == "" || !knownCompression(comp) {
		return bad(upstream.ReasonCompression, "upstream %s: NAR of %s in %q, which this cache cannot decode", f.a.Upstream.Name, ni.StorePath, comp)
	}
	intake := make(chan intakeResult, 1)
	if named {
		go f.intake(blobName(fileHash, comp), intake)
	}
	// A named file is verified by the intake (its name is its hash):
	// hashing it here as well would cost the download a second pass.
	sum, err := f.download(!named)
	f.downloaded(err)
	if err != nil {
		if named {
			<-intake
		}
		return err
	}
	if !named {
		go f.intake(blobName(sum, comp), intake)
	}
	res := <-intake
	if res.err != nil {
		return res.err
	}
	if string(res.info.NarHash) != string(ni.NarHash.Digest) || res.info.NarSize != ni.NarSize {
		return bad(upstream.ReasonNarHash, "upstream %s sent a NAR of %s that is not the one it signed: sha256:%s, %d bytes (narinfo: %s, %d bytes)",
			f.a.Upstream.Name, ni.StorePath, nixbase32.EncodeToString(res.info.NarHash), res.info.NarSize, ni.NarHash, ni.NarSize)
	}
	return f.p.into.Adopt(f.p.ctx, res.info.Name, ni, f.a.Upstream.Name)
}

func knownCompression(c string) bool {
	_, ok := narinfo.NARSuffix(c)
	return ok
}

// blobName is the upload store's name of a NAR file.
func blobName(fileHash []byte, comp string) string {
	suffix, _ := narinfo.NARSuffix(comp)
	return nixbase32.EncodeToString(fileHash) + suffix
}

type intakeResult struct {
	info *store.BlobInfo
	err  error
}

// intake feeds the file, as it grows, to the upload store's PutNAR. A
// refusal is the upstream's fault (its bytes do not hash to the name its
// narinfo gave, or are no valid NAR), unless the download failed first.
func (f *flight) intake(name string, out chan<- intakeResult) {
	r := f.reader(f.p.ctx, false)
	defer r.Close()
	info, err := f.p.into.PutNAR(f.p.ctx, name, r)
	if err != nil {
		f.cancel()
		if derr := r.downloadErr(); derr != nil {
			err = derr
		} else if errors.Is(err, store.ErrInvalid) {
			err = &badNAR{reason: upstream.ReasonInvalidNAR, err: fmt.Errorf("upstream %s: NAR file of %s refused: %w", f.a.Upstream.Name, f.a.NarInfo.StorePath, err)}
		}
	}
	out <- intakeResult{info, err}
}

// download copies the upstream's body into the file, hashing it when
// asked (the file's name is not known otherwise), and checks that it is
// as long as the narinfo says.
func (f *flight) download(hashIt bool) ([]byte, error) {
	ni, u := f.a.NarInfo, f.a.Upstream
	body, err := f.p.set.OpenNAR(f.ctx, f.a)
	if err != nil {
		return nil, fmt.Errorf("pull %s from %s: %w", ni.StorePath, u.Name, err)
	}
	defer body.Close()
	var h hash.Hash
	if hashIt {
		h = sha256.New()
	}
	buf := make([]byte, 256<<10)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if err := f.write(buf[:n], h); err != nil {
				return nil, err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, bad(upstream.ReasonTruncated, "pull %s from %s: the download broke off after %d bytes: %w", ni.StorePath, u.Name, f.n, rerr)
		}
	}
	if f.size >= 0 && f.n != f.size {
		return nil, bad(upstream.ReasonTruncated, "pull %s from %s: the file has %d bytes, the narinfo says %d", ni.StorePath, u.Name, f.n, f.size)
	}
	if h == nil {
		return nil, nil
	}
	return h.Sum(nil), nil
}

// write appends p to the file (and to h, when not nil) and wakes the
// readers.
func (f *flight) write(p []byte, h hash.Hash) error {
	if f.size >= 0 && f.n+int64(len(p)) > f.size {
		return bad(upstream.ReasonNarSize, "pull %s from %s: more than the %d bytes the narinfo says", f.a.NarInfo.StorePath, f.a.Upstream.Name, f.size)
	}
	if _, err := f.file.WriteAt(p, f.n); err != nil {
		return fmt.Errorf("pull %s: %w", f.a.NarInfo.StorePath, err)
	}
	if h != nil {
		h.Write(p)
	}
	f.mu.Lock()
	f.n += int64(len(p))
	f.cond.Broadcast()
	f.mu.Unlock()
	return nil
}

// downloaded tells the intake, which tails the file without waiting for
// the verdict, that no more bytes come, and why.
func (f *flight) downloaded(err error) {
	f.mu.Lock()
	f.dlDone, f.dlErr = true, err
	f.cond.Broadcast()
	f.mu.Unlock()
}

// release drops a reference; the last one closes the file.
func (f *flight) release() {
	f.mu.Lock()
	f.refs--
	last := f.refs == 0
	f.mu.Unlock()
	if last {
		f.file.Close()
	}
}

// reader tails the flight's file. A withholding reader (a client's) gets
// the last byte written only after the verdict, and the verdict's error
// as soon as there is one; the intake's reader ends where the download
// did.
type reader struct {
	f        *flight
	ctx      context.Context
	stop     func() bool
	pos      int64
	withhold bool
	closed   bool
	err      error // the first error Read returned other than io.EOF
}

// reader opens a reader; the caller holds a reference to f (the flight's
// own, or p.mu while f is in the map) so the file is still open.
func (f *flight) reader(ctx context.Context, withhold bool) *reader {
	f.mu.Lock()
	f.refs++
	f.mu.Unlock()
	r := &reader{f: f, ctx: ctx, withhold: withhold}
	r.stop = context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	return r
}

// avail waits, with f.mu held, until the reader may read past its
// position; end reports that it is at the end instead.
func (r *reader) avail() (n int64, end bool, err error) {
	f := r.f
	for {
		switch {
		case f.done && f.err != nil && r.withhold:
			return 0, false, f.err
		case !r.withhold && f.dlErr != nil:
			return 0, false, f.dlErr
		}
		limit, final := f.n, false
		if r.withhold {
			final = f.done
			if !final {
				limit--
			}
		} else {
			final = f.dlDone
		}
		if r.pos < limit {
			return limit - r.pos, false, nil
		}
		if final {
			return 0, true, nil
		}
		if err := r.ctx.Err(); err != nil {
			return 0, false, err
		}
		f.cond.Wait()
	}
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// Err is the error the reader failed with, if any: the server cuts the
// response with it (a body short of its Content-Length is not enough).
func (r *reader) Err() error { return r.err }

func (r *reader) read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.f.mu.Lock()
	n, end, err := r.avail()
	r.f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if end {
		return 0, io.EOF
	}
	if int64(len(p)) > n {
		p = p[:n]
	}
	m, err := r.f.file.ReadAt(p, r.pos)
	r.pos += int64(m)
	if err == io.EOF && m > 0 {
		err = nil
	}
	return m, err
}

// Seek moves within the file; from its end only when the narinfo gave
// its size (http.ServeContent asks for it).
func (r *reader) Seek(offset int64, whence int) (int64, error) {
	var base int64
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		base = r.pos
	case io.SeekEnd:
		if r.f.size < 0 {
			return 0, errors.New("pull-through: the size of the file is not known before it is whole")
		}
		base = r.f.size
	default:
		return 0, errors.New("pull-through: bad whence")
	}
	if base+offset < 0 {
		return 0, errors.New("pull-through: seek before the start")
	}
	r.pos = base + offset
	return r.pos, nil
}

// wait returns the verdict once there is one.
func (r *reader) wait() error {
	f := r.f
	f.mu.Lock()
	defer f.mu.Unlock()
	for !f.done {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		f.cond.Wait()
	}
	return f.err
}

// downloadErr is why the download failed, or nil.
func (r *reader) downloadErr() error {
	r.f.mu.Lock()
	defer r.f.mu.Unlock()
	return r.f.dlErr
}

func (r *reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.stop()
	r.f.release()
	return nil
}
