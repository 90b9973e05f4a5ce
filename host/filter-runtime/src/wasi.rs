//! WASI as filters see it: wasmtime-wasi's synchronous `wasi:cli/command` imports, with
//! every function that can wait replaced by one that cannot.
//!
//! Epoch deadlines interrupt Wasm code, not host calls: a guest inside a host function
//! that blocks (`std::thread::sleep` is `subscribe-duration` then `pollable.block` or
//! `poll`) holds the calling thread for as long as it asks, whatever the call deadline.
//! A filter has nothing to wait for (no files, sockets or stdin; clocks are frozen), so
//! each waiting entry point of `wasi:io` traps at once with a [`BlockingCall`] error and
//! the call fails as blocked, within its deadline. Writes to stdout and stderr, which std
//! makes through `blocking-write-and-flush`, keep working: they go to the never-full
//! guest log sink, and are refused only if a stream could not take the bytes at once.
//!
//! The other blocking functions of the linked world are unreachable: `wasi:filesystem`
//! needs a descriptor and no directory is preopened; `wasi:sockets` refuses to create
//! sockets and to resolve names (see `StoreState::new`).

use bytes::Bytes;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::{DynOutputStream, StreamError, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::streams::{Host as _, StreamError as WitStreamError};

use crate::host_state::OutputTap;

/// The `wasi:io` release wasmtime-wasi defines. Guests built against any 0.2.x release
/// link to it by semver, so the functions replaced here are the ones every guest reaches.
/// [`add_to_linker`] fails if wasmtime-wasi stops defining them under this name, so an
/// upgrade cannot silently bring the blocking versions back.
const WASI_IO_VERSION: &str = "0.2.12";

/// Largest write `blocking-write-and-flush` accepts, as the WASI spec and wasmtime-wasi
/// set it.
const MAX_BLOCKING_WRITE: usize = 4096;

/// A guest called a WASI function that would wait. The trap error of that call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module called a blocking WASI function ({function}); filters must not block")]
pub(crate) struct BlockingCall {
    /// Interface and function, e.g. `wasi:io/poll.poll`.
    pub(crate) function: &'static str,
}

/// Functions that can only wait, as (interface, function, name in errors): they trap
/// whenever called.
const ALWAYS_BLOCKING: [(&str, &str, &str); 5] = [
    ("poll", "poll", "wasi:io/poll.poll"),
    (
        "poll",
        "[method]pollable.block",
        "wasi:io/poll.[method]pollable.block",
    ),
    (
        "streams",
        "[method]input-stream.blocking-read",
        "wasi:io/streams.[method]input-stream.blocking-read",
    ),
    (
        "streams",
        "[method]input-stream.blocking-skip",
        "wasi:io/streams.[method]input-stream.blocking-skip",
    ),
    (
        "streams",
        "[method]output-stream.blocking-splice",
        "wasi:io/streams.[method]output-stream.blocking-splice",
    ),
];

/// Links WASI into `linker`, with every waiting entry point replaced (see the module docs).
/// What a module writes to stdout and stderr is also shown to the store's [`OutputTap`],
/// where the runtime finds the message of a panic std reported there.
pub(crate) fn add_to_linker<T: WasiView + OutputTap + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    for (interface, function, name) in ALWAYS_BLOCKING {
        replace(linker, interface, function, move |instance, function| {
            instance.func_new(function, move |_, _, _, _| {
                Err(BlockingCall { function: name }.into())
            })
        })?;
    }
    replace_write(
        linker,
        "[method]output-stream.blocking-write-and-flush",
        |table, stream, bytes| {
            if bytes.len() > MAX_BLOCKING_WRITE {
                Err(StreamError::trap(
                    "buffer too large for blocking-write-and-flush (at most 4096 bytes)",
                ))
            } else {
                write_and_flush_now(
                    table,
                    stream,
                    Bytes::from(bytes),
                    "wasi:io/streams.[method]output-stream.blocking-write-and-flush",
                )
            }
        },
    )?;
    // The non-blocking write (after `check-write`), which the wasip1 adapter's stdio uses:
    // unchanged, but shown to the tap like the blocking one.
    replace_write(
        linker,
        "[method]output-stream.write",
        |table, stream, bytes| table.get_mut(stream)?.write(Bytes::from(bytes)),
    )?;
    replace(
        linker,
        "streams",
        "[method]output-stream.blocking-write-zeroes-and-flush",
        |instance, function| {
            instance.func_wrap(
                function,
                |mut store, (stream, len): (Resource<DynOutputStream>, u64)| {
                    let table = store.data_mut().ctx().table;
                    let result = match usize::try_from(len) {
                        Ok(len) if len <= MAX_BLOCKING_WRITE => write_and_flush_now(
                            table,
                            &stream,
                            Bytes::from(vec![0; len]),
                            "wasi:io/streams.[method]output-stream.blocking-write-zeroes-and-flush",
                        ),
                        _ => Err(StreamError::trap(
                            "buffer too large for blocking-write-zeroes-and-flush (at most 4096 bytes)",
                        )),
                    };
                    to_wit(table, result)
                },
            )
        },
    )?;
    replace(
        linker,
        "streams",
        "[method]output-stream.blocking-flush",
        |instance, function| {
            instance.func_wrap(
                function,
                |mut store, (stream,): (Resource<DynOutputStream>,)| {
                    let table = store.data_mut().ctx().table;
                    let result = write_and_flush_now(
                        table,
                        &stream,
                        Bytes::new(),
                        "wasi:io/streams.[method]output-stream.blocking-flush",
                    );
                    to_wit(table, result)
                },
            )
        },
    )?;
    Ok(())
}

/// Redefines the `wasi:io/streams` write `function` as `write`, with the bytes shown to
/// the store's [`OutputTap`] first.
fn replace_write<T: WasiView + OutputTap + 'static>(
    linker: &mut Linker<T>,
    function: &str,
    write: fn(&mut ResourceTable, &Resource<DynOutputStream>, Vec<u8>) -> StreamResult<()>,
) -> wasmtime::Result<()> {
    replace(linker, "streams", function, move |instance, function| {
        instance.func_wrap(
            function,
            move |mut store, (stream, bytes): (Resource<DynOutputStream>, Vec<u8>)| {
                store.data_mut().tap(&bytes);
                let table = store.data_mut().ctx().table;
                let result = write(table, &stream, bytes);
                to_wit(table, result)
            },
        )
    })
}

/// Redefines `function` of `wasi:io/<interface>` with `define`, after checking that
/// wasmtime-wasi defined it: the linker has no lookup, but defining a name twice without
/// shadowing fails, and that failure is the proof.
fn replace<T: 'static>(
    linker: &mut Linker<T>,
    interface: &str,
    function: &str,
    define: impl Fn(&mut wasmtime::component::LinkerInstance<'_, T>, &str) -> wasmtime::Result<()>,
) -> wasmtime::Result<()> {
    let instance_name = format!("wasi:io/{interface}@{WASI_IO_VERSION}");
    linker.allow_shadowing(false);
    let fresh = define(&mut linker.instance(&instance_name)?, function);
    if fresh.is_ok() {
        wasmtime::bail!(
            "wasmtime-wasi does not define {instance_name} {function}, so its blocking version \
             cannot be replaced; update WASI_IO_VERSION to the wasi:io release it links"
        );
    }
    linker.allow_shadowing(true);
    let replaced = define(&mut linker.instance(&instance_name)?, function);
    linker.allow_shadowing(false);
    replaced
}

/// Writes `bytes` and flushes, if `stream` can take them now; a stream that would make
/// the caller wait (no room, or not ready again after the flush) is a [`BlockingCall`].
fn write_and_flush_now(
    table: &mut ResourceTable,
    stream: &Resource<DynOutputStream>,
    bytes: Bytes,
    function: &'static str,
) -> StreamResult<()> {
    let s = table.get_mut(stream)?;
    let would_wait = || StreamError::Trap(BlockingCall { function }.into());
    if !bytes.is_empty() {
        if s.check_write()? < bytes.len() {
            return Err(would_wait());
        }
        s.write(bytes)?;
    }
    s.flush()?;
    if s.check_write()? == 0 {
        return Err(would_wait());
    }
    Ok(())
}

/// A stream result as the WIT function returns it: stream errors to the guest, traps to
/// the caller.
fn to_wit(
    table: &mut ResourceTable,
    result: StreamResult<()>,
) -> wasmtime::Result<(Result<(), WitStreamError>,)> {
    Ok((match result {
        Ok(()) => Ok(()),
        Err(e) => Err(table.convert_stream_error(e)?),
    },))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Engine;
    use wasmtime_wasi::{WasiCtx, WasiCtxView};

    struct Host {
        ctx: WasiCtx,
        table: ResourceTable,
    }

    impl OutputTap for Host {
        fn tap(&mut self, _: &[u8]) {}
    }

    impl WasiView for Host {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.ctx,
                table: &mut self.table,
            }
        }
    }

    #[test]
    fn every_replaced_function_is_one_wasmtime_wasi_defines() {
        let engine = Engine::default();
        let mut linker = Linker::<Host>::new(&engine);
        add_to_linker(&mut linker).expect("wasmtime-wasi defines every function replaced");
    }

    /// What a [`Recording`] stream was given: bytes written, flushes.
    type Record = std::sync::Arc<parking_lot::Mutex<(Vec<u8>, usize)>>;

    /// An output stream with a fixed write permit that records what it was given.
    struct Recording {
        permit: usize,
        record: Record,
    }

    #[wasmtime_wasi::async_trait]
    impl wasmtime_wasi::p2::Pollable for Recording {
        async fn ready(&mut self) {}
    }

    impl wasmtime_wasi::p2::OutputStream for Recording {
        fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
            self.record.lock().0.extend_from_slice(&bytes);
            Ok(())
        }
        fn flush(&mut self) -> StreamResult<()> {
            self.record.lock().1 += 1;
            Ok(())
        }
        fn check_write(&mut self) -> StreamResult<usize> {
            Ok(self.permit)
        }
    }

    fn stream(table: &mut ResourceTable, permit: usize) -> (Resource<DynOutputStream>, Record) {
        let record = Record::default();
        let s: DynOutputStream = Box::new(Recording {
            permit,
            record: record.clone(),
        });
        (table.push(s).unwrap(), record)
    }

    #[test]
    fn a_stream_with_room_is_written_and_flushed_without_waiting() {
        let mut table = ResourceTable::new();
        let (s, record) = stream(&mut table, 64);
        write_and_flush_now(&mut table, &s, Bytes::from_static(b"panic: x\n"), "f").unwrap();
        write_and_flush_now(&mut table, &s, Bytes::new(), "f").unwrap();
        assert_eq!(*record.lock(), (b"panic: x\n".to_vec(), 2));
    }

    #[test]
    fn a_stream_that_would_make_the_writer_wait_traps() {
        let mut table = ResourceTable::new();
        for (permit, bytes) in [(4, &b"too long"[..]), (0, &b""[..])] {
            let (s, record) = stream(&mut table, permit);
            match write_and_flush_now(&mut table, &s, Bytes::copy_from_slice(bytes), "wasi:x") {
                Err(StreamError::Trap(e)) => assert_eq!(
                    e.downcast_ref::<BlockingCall>(),
                    Some(&BlockingCall { function: "wasi:x" })
                ),
                other => panic!("permit {permit}: expected a trap, got {other:?}"),
            }
            assert!(record.lock().0.is_empty(), "nothing written");
        }
    }

    #[test]
    fn replacing_a_function_that_is_not_there_fails() {
        let engine = Engine::default();
        let mut linker = Linker::<Host>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
        let err = replace(&mut linker, "poll", "poll-forever", |instance, function| {
            instance.func_new(function, |_, _, _, _| Ok(()))
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("does not define wasi:io/poll@0.2.12 poll-forever"),
            "{err}"
        );
    }
}
