// Package blob is where the upload store keeps its files (NARs as
// uploaded, build logs, quarantined NARs): a flat namespace of immutable
// named blobs, on a local disk (diskblob) or in an S3 bucket (s3blob).
//
// What the store needs from either, and blobtest checks:
//   - nothing written becomes visible under any name until Publish, so an
//     upload that fails verification or is cut off leaves nothing a reader
//     or a List can see (on disk a temp file, in S3 an incomplete
//     multipart upload, both removed by Sweep once old);
//   - Publish replaces whatever the name held, atomically: a new Open
//     sees the new blob; a reader opened before sees the old bytes or
//     (in S3, where it reads in ranges) fails with an error, never a mix;
//   - writing streams: memory stays bounded (one S3 part) whatever the
//     size;
//   - a Reader reads at any offset (ranges, the tail of a download).
//
// Missing blobs are fs.ErrNotExist (errors.Is), for Open, Stat and nothing
// else: Remove of a missing blob is not an error.
package blob

import (
	"context"
	"io"
	"time"
)

// Dir is one namespace of blobs.
type Dir interface {
	// Create starts a new blob, invisible until its Publish.
	Create(ctx context.Context) (Temp, error)
	// Open opens a published blob.
	Open(ctx context.Context, name string) (Reader, error)
	// Stat describes a published blob.
	Stat(ctx context.Context, name string) (Info, error)
	// Remove deletes a published blob; a missing one is no error.
	Remove(ctx context.Context, name string) error
	// List calls fn for every published blob, in no particular order.
	List(ctx context.Context, fn func(Info) error) error
	// Sweep removes the unpublished leftovers of writes started before
	// cutoff (interrupted uploads), returning how many.
	Sweep(ctx context.Context, cutoff time.Time) (int, error)
	// Sync makes the names published so far durable (a directory fsync
	// on disk; nothing in S3, where Publish is durable when it returns).
	Sync(ctx context.Context) error
	// Local is the directory the blobs are files in, "" when they are
	// not local files (then a reader cannot be sent with sendfile).
	Local() string
}

// Temp is a blob being written.
type Temp interface {
	io.Writer
	// Publish makes what was written the blob name. On disk the file is
	// renamed into place (its bytes may not be durable yet: Sync);
	// in S3 the upload is completed.
	Publish(name string) error
	// Sync makes the written bytes durable (fsync on disk; a no-op in
	// S3). It may be called before or after Publish.
	Sync() error
	// Close releases the temp; before Publish it discards what was
	// written. It is safe to call more than once.
	Close() error
}

// Reader reads one published blob.
type Reader interface {
	io.ReadSeekCloser
	io.ReaderAt
	// Size is the blob's size in bytes.
	Size() int64
}

// Info describes a published blob.
type Info struct {
	Name    string
	Size    int64
	ModTime time.Time // when it was published
}

// Namer is an optional interface of a Dir that writes faster when told
// the name at the start: s3blob uploads the parts straight under the
// final key (an incomplete multipart upload is invisible, and completing
// it replaces the old object atomically) instead of under a temp key
// copied into place at Publish.
type Namer interface {
	// CreateNamed starts a blob that may be published only as name.
	CreateNamed(ctx context.Context, name string) (Temp, error)
}

// CreateFor starts a blob to be published as name, by CreateNamed when d
// has it, else by Create.
func CreateFor(ctx context.Context, d Dir, name string) (Temp, error) {
	if n, ok := d.(Namer); ok {
		return n.CreateNamed(ctx, name)
	}
	return d.Create(ctx)
}

// Copy writes blob name of from as blob to of to (a quarantine, a
// migration), published only once complete.
func Copy(ctx context.Context, from Dir, name string, to Dir, toName string) error {
	r, err := from.Open(ctx, name)
	if err != nil {
		return err
	}
	defer r.Close()
	t, err := CreateFor(ctx, to, toName)
	if err != nil {
		return err
	}
	defer t.Close()
	if _, err := io.Copy(t, r); err != nil {
		return err
	}
	if err := t.Sync(); err != nil {
		return err
	}
	return t.Publish(toName)
}
