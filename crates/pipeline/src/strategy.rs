//! The two ways a bundle carries its Lua modules.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// Every Lua module compiled to bytecode inside the binary; no `.lua` file ships.
    Embed,
    /// The same binary without the bytecode, the Lua files under `lualib/`.
    Lualib,
}

impl Strategy {
    pub const ALL: [Strategy; 2] = [Strategy::Embed, Strategy::Lualib];

    /// As in bundle names and step names: `embed`, `lualib`.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Embed => "embed",
            Strategy::Lualib => "lualib",
        }
    }

    /// How the bundle's PROVENANCE.toml describes it.
    pub fn description(self) -> &'static str {
        match self {
            Strategy::Embed => "bytecode linked into sbin/nginx",
            Strategy::Lualib => "files under lualib/",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
