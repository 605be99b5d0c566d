//! One open file description, several operations on it: what the VM's `kernel-features`
//! scenario needs and busybox cannot do (a shell redirection cannot seek back to offset 0 on the
//! descriptor it wrote to, and reopening gives a new description, which per-descriptor state
//! such as memory.peak's reset or a PSI trigger belongs to).
//!
//! ```text
//! fd_probe FILE OP...
//!   w:TEXT    write TEXT in one write(2)
//!   r         seek to 0 and read to the end
//!   sleep:MS  sleep
//! ```
//!
//! Prints one line per step: `open=ok`, `write=ok`, `read=CONTENT` (newlines shown as ` | `), or
//! `STEP=err:ENAME` (the errno's name, else its number; `shortN` for a partial write); exits 0 when every step succeeded,
//! 1 when one failed (the later steps are skipped), 2 on bad usage.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(1) => "EPERM",
        Some(2) => "ENOENT",
        Some(11) => "EAGAIN",
        Some(13) => "EACCES",
        Some(16) => "EBUSY",
        Some(22) => "EINVAL",
        Some(95) => "EOPNOTSUPP",
        Some(n) => return format!("errno{n}"),
        None => return format!("{e}"),
    };
    name.to_string()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, ops)) = args.split_first() else {
        eprintln!("usage: fd_probe FILE [w:TEXT|r|sleep:MS]...");
        return ExitCode::from(2);
    };
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => {
            println!("open=ok");
            f
        }
        Err(e) => {
            println!("open=err:{}", errno_name(&e));
            return ExitCode::from(1);
        }
    };
    for op in ops {
        if let Some(text) = op.strip_prefix("w:") {
            match file.write(text.as_bytes()) {
                Ok(n) if n == text.len() => println!("write=ok"),
                Ok(n) => {
                    println!("write=err:short{n}");
                    return ExitCode::from(1);
                }
                Err(e) => {
                    println!("write=err:{}", errno_name(&e));
                    return ExitCode::from(1);
                }
            }
        } else if op == "r" {
            let mut s = String::new();
            match file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(&mut s))
            {
                Ok(_) => println!("read={}", s.trim_end().replace('\n', " | ")),
                Err(e) => {
                    println!("read=err:{}", errno_name(&e));
                    return ExitCode::from(1);
                }
            }
        } else if let Some(ms) = op.strip_prefix("sleep:") {
            let Ok(ms) = ms.parse::<u64>() else {
                eprintln!("fd_probe: bad sleep {ms}");
                return ExitCode::from(2);
            };
            std::thread::sleep(Duration::from_millis(ms));
        } else {
            eprintln!("fd_probe: unknown step {op}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
