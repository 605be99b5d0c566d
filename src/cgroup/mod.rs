//! Everything about cgroup v2 interface files: the pure parsers ([`parse`]) and the file I/O
//! ([`io`]) the sampler and the actuator build on. All paths are under a cgroup root that is
//! passed in, so tests run the same code against plain directory trees.

pub mod io;
pub mod parse;

pub use io::{
    CgroupError, CgroupFile, held_descriptors, read_value, release_descriptor, reserve_descriptor,
    set_held_budget, write_once, write_verified,
};
pub use parse::{CpuMax, CpuStat, MemoryEvents, MemoryStat, ParseError, Pressure};
