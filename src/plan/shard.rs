//! Shards: a stable split of the work by destination repository, so that
//! N workers sharing one rules set copy every destination exactly once.

use std::fmt;
use std::str::FromStr;

use crate::oci::{Reference, Repository};

/// One worker's part of the work: shard `index` of `count`, counted from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Returns whether `destination` belongs to this shard. Every tag of one
    /// destination repository lands in the same shard.
    pub fn contains(&self, destination: &Reference) -> bool {
        self.contains_repository(&destination.registry, &destination.repository)
    }

    /// Returns whether the repository `registry/repository` belongs to this shard.
    pub fn contains_repository(&self, registry: &str, repository: &Repository) -> bool {
        let key = format!("{registry}/{repository}");
        fnv1a_64(key.as_bytes()) % u64::from(self.count) == u64::from(self.index)
    }
}

/// FNV-1a, 64-bit. Unlike std's `DefaultHasher`, which is seeded at random
/// per process, it gives every worker and every release the same split.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// Error for an invalid `--shard` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid shard {0:?}: expected I/N with 0 <= I < N, such as 0/4")]
pub struct ShardError(String);

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ShardError(text.to_string());
        let (index, count) = text.split_once('/').ok_or_else(invalid)?;
        let index: u32 = index.trim().parse().map_err(|_| invalid())?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        if count == 0 || index >= count {
            return Err(invalid());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_valid_and_invalid() {
        assert_eq!("2/5".parse(), Ok(Shard { index: 2, count: 5 }));
        assert_eq!("0/1".parse(), Ok(Shard { index: 0, count: 1 }));
        for text in ["5/5", "1/0", "3", "a/2", "-1/2", ""] {
            assert!(text.parse::<Shard>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn fnv1a_known_vectors() {
        // Published FNV-1a 64-bit values of these inputs.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn tags_of_one_repository_share_a_shard() {
        let shard = Shard { index: 0, count: 3 };
        let a: Reference = "r.example/team/app:v1".parse().unwrap();
        let b: Reference = "r.example/team/app:v2".parse().unwrap();
        assert_eq!(shard.contains(&a), shard.contains(&b));
    }

    #[test]
    fn every_repository_in_exactly_one_shard() {
        let count = 4;
        for n in 0..200 {
            let reference: Reference = format!("r.example/repo{n}:latest").parse().unwrap();
            let owners = (0..count)
                .filter(|&index| Shard { index, count }.contains(&reference))
                .count();
            assert_eq!(owners, 1, "{reference}");
        }
    }
}
