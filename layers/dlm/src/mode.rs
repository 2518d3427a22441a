//! The six lock modes and their compatibility (the VMS lock manager's, as in Linux fs/dlm).

use std::fmt;

/// A lock mode, from the weakest to the strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Null: holds the resource (and its value block) without restricting anyone.
    Nl = 0,
    /// Concurrent read: read, others may write.
    Cr = 1,
    /// Concurrent write: write, others may read or write concurrently.
    Cw = 2,
    /// Protected read: read, nobody writes.
    Pr = 3,
    /// Protected write: write, others may only read concurrently (CR).
    Pw = 4,
    /// Exclusive.
    Ex = 5,
}

/// `COMPATIBLE[a][b]`: a lock granted in mode `a` lets one in mode `b` be granted beside it.
const COMPATIBLE: [[bool; 6]; 6] = [
    //  NL    CR     CW     PR     PW     EX
    [true, true, true, true, true, true],      // NL
    [true, true, true, true, true, false],     // CR
    [true, true, true, false, false, false],   // CW
    [true, true, false, true, false, false],   // PR
    [true, true, false, false, false, false],  // PW
    [true, false, false, false, false, false], // EX
];

impl Mode {
    pub const ALL: [Mode; 6] = [Mode::Nl, Mode::Cr, Mode::Cw, Mode::Pr, Mode::Pw, Mode::Ex];

    /// Whether locks in `self` and `other` may be granted together.
    pub fn compatible(self, other: Mode) -> bool {
        COMPATIBLE[self as usize][other as usize]
    }

    /// Whether a holder in this mode writes the value block when it converts down or unlocks.
    pub fn writes_value(self) -> bool {
        matches!(self, Mode::Pw | Mode::Ex)
    }

    /// Whether a holder's copy of the value block is the current one: no mode that writes it
    /// (PW, EX) can have been granted since this lock was.
    pub fn excludes_writers(self) -> bool {
        matches!(self, Mode::Cw | Mode::Pr | Mode::Pw | Mode::Ex)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Nl => "nl",
            Mode::Cr => "cr",
            Mode::Cw => "cw",
            Mode::Pr => "pr",
            Mode::Pw => "pw",
            Mode::Ex => "ex",
        }
    }

    pub fn from_u8(v: u8) -> Option<Mode> {
        Mode::ALL.get(v as usize).copied()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown lock mode {s:?}: use nl, cr, cw, pr, pw or ex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_is_symmetric_and_standard() {
        for a in Mode::ALL {
            for b in Mode::ALL {
                assert_eq!(a.compatible(b), b.compatible(a), "{a} {b}");
            }
            assert!(a.compatible(Mode::Nl));
        }
        assert!(Mode::Pr.compatible(Mode::Pr));
        assert!(!Mode::Pr.compatible(Mode::Cw));
        assert!(Mode::Pw.compatible(Mode::Cr));
        assert!(!Mode::Pw.compatible(Mode::Pw));
        assert!(!Mode::Ex.compatible(Mode::Cr));
        assert!(Mode::Cw.compatible(Mode::Cw));
    }

    #[test]
    fn a_holder_that_excludes_writers_is_compatible_with_none() {
        for a in Mode::ALL {
            assert_eq!(a.excludes_writers(), !a.compatible(Mode::Pw) && !a.compatible(Mode::Ex), "{a}");
        }
    }

    #[test]
    fn modes_parse_in_any_case() {
        assert_eq!("EX".parse::<Mode>(), Ok(Mode::Ex));
        assert!("xx".parse::<Mode>().is_err());
    }
}
