//! The ACL checks of the hot path (a publish's `write`, a delivery's
//! `read`) allocate nothing: counted with a global allocator that counts
//! this thread's allocations, over users, patterns with `%u`/`%c`, deny
//! rules and `$SYS` topics.

use ringmq::auth::acl::{AclFile, ClientAcl};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

/// The system allocator, counting the allocations of each thread.
struct Counting;

thread_local! {
    /// Allocations (and reallocations) this thread made. Const-initialized
    /// and without a destructor, so the allocator may touch it at any time.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn counted() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call forwards to `System` with the caller's arguments, so
// `System`'s guarantees hold; the counting has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller allocated `ptr` with `layout` through us.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `realloc`, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ACL: &str = "\
topic read $SYS/#
topic public/#
user alice
topic readwrite alice/#
topic read shared/+/news
topic deny alice/secret
pattern readwrite devices/%c/#
pattern read inbox/%u
pattern deny devices/%c/locked
";

#[test]
fn topic_checks_allocate_nothing() {
    let file = Arc::new(AclFile::parse(ACL).unwrap());
    let clients = [ClientAcl::new(Arc::clone(&file), Some("alice")), ClientAcl::new(file, None)];
    let topics = [
        "alice/a/b/c",
        "alice/secret",
        "shared/x/news",
        "shared/x/y/news",
        "devices/dev1/state",
        "devices/dev1/locked",
        "devices/dev2/state",
        "inbox/alice",
        "public/a",
        "$SYS/broker/uptime",
        "a/very/deep/topic/with/many/levels/that/matches/nothing/at/all",
    ];
    let mut allowed = 0;
    let before = counted();
    for _ in 0..100 {
        for client in &clients {
            for topic in topics {
                allowed += usize::from(client.may_publish(topic, "dev1"));
                allowed += usize::from(client.may_receive(topic, "dev1"));
            }
        }
    }
    let allocations = counted() - before;
    assert_eq!(allocations, 0, "{allocations} allocations in 4,400 checks");
    // The checks did answer: alice may write and read alice/a/b/c and her
    // device's state, read shared/x/news and her inbox (6 of 22);
    // anonymous may write and read public/a and the device's state, read
    // $SYS/broker/uptime (5 of 22).
    assert_eq!(allowed, 100 * (6 + 5), "checks allowed {allowed}");
}
