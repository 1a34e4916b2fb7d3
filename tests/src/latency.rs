//! Round-trip times between simulated nodes.
//!
//! The simulator delays every datagram by the one-way delay from sender to
//! receiver, taken as half of the round-trip time (RTT) given here. Three
//! models:
//!
//! - [`LatencyModel::constant`]: every pair has the same RTT. For small unit
//!   tests where geography does not matter.
//! - [`LatencyModel::sphere`]: a synthetic, seeded Internet. Nodes are points
//!   on an Earth-sized sphere, most of them scattered around a few populated
//!   regions (see [`SphereParams`]), and a pair's RTT is the fibre
//!   propagation delay over the great-circle distance, inflated for indirect
//!   routes, plus each end's access delay. RTTs range from about 2 ms (two
//!   nodes in one metro area) to about 300 ms (antipodes behind slow access
//!   links), with a median near 100 ms.
//! - [`LatencyModel::matrix`]: a measured RTT matrix, usually the PlanetLab
//!   data set in `tests/data/` (245 hosts, median RTT 131 ms) loaded with
//!   [`RttMatrix::load`]. Node `i` sits at host `i % N`. The first `N` nodes
//!   see the measured matrix exactly; every later node is an extra machine at
//!   an already used host, behind an access link that adds a seeded delay
//!   uniform in [`MATRIX_EXTRA_ACCESS_MS`] to each of its RTTs, so that two
//!   nodes at one host are close but not at distance zero.
//!
//! Each model also says which routers sit on the last hops toward a node
//! ([`LatencyModel::routers`]), what a traceroute toward it would show and
//! what Coral's router hints (spec §5) are made of. A trace learns the
//! last five hops (spec §5). On the sphere they are the points of presence
//! of the 1°, 3°, 9°, 27° and 81° cells (about 110, 330, 1000, 3000 and
//! 9000 km) of latitude/longitude grids that hold the node: nodes in one
//! metro area share their nearest hop, nodes in one region the middle
//! ones, and nodes on one continent the farthest, as access, metro,
//! regional and backbone routers are shared. A measured matrix says
//! nothing about routes or addresses, so both are inferred from its RTTs
//! ([`MatrixTopology`]): hosts within [`MATRIX_LAN_US`] of each other are
//! one site's LAN and share a /24 (PlanetLab sites ran two or three
//! machines on one subnet, 0.1 to 0.3 ms apart), and a host's last five
//! hops are the points of presence of RTT groups of radius 1, 3, 9, 27
//! and 81 ms, about the RTTs across the sphere's cells.
//!
//! Per-node placement is drawn from an RNG seeded by the model seed and the
//! node index alone, so a node's place does not depend on how many nodes
//! were added before it or in what order.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coral_core::dsht::hints::Router;
use coral_core::rng::Rng;

use crate::trace::mix64;

/// Where the PlanetLab RTT matrix shipped with this crate lives.
pub const PLANETLAB_RTT_PATH: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/data/planetlab-245-rtt.tsv");

/// Cell sizes, in degrees, of the grids whose points of presence are a
/// sphere node's last hops, nearest first: the five hops a trace learns
/// (spec §5).
pub const ROUTER_CELLS_DEG: [f64; 5] = [1.0, 3.0, 9.0, 27.0, 81.0];

/// The largest RTT, in µs, between two hosts of a measured matrix that
/// [`MatrixTopology`] puts on one LAN (one /24): a campus network's RTT,
/// well below any path that leaves the site.
pub const MATRIX_LAN_US: u32 = 500;

/// The radii, in µs, of the RTT groups whose points of presence are a
/// matrix host's last hops, nearest first: about the RTT across the
/// sphere's cells ([`ROUTER_CELLS_DEG`]).
pub const MATRIX_POP_RADII_US: [u32; 5] = [1_000, 3_000, 9_000, 27_000, 81_000];

/// The range, in milliseconds, of the extra RTT an access link adds to every
/// RTT of a node beyond the first `N` in [`LatencyModel::matrix`].
pub const MATRIX_EXTRA_ACCESS_MS: (f64, f64) = (0.5, 5.0);

/// Why an RTT matrix could not be loaded. Lines and columns count from 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// There is no row at all.
    #[error("the matrix has no rows")]
    Empty,
    /// An entry is not a decimal number.
    #[error("line {line}, column {column}: {token:?} is not a number")]
    NotANumber {
        /// The line in the file.
        line: usize,
        /// The entry's position on its line.
        column: usize,
        /// The text found.
        token: String,
    },
    /// An entry is NaN or infinite.
    #[error("line {line}, column {column}: {value} is not finite")]
    NotFinite {
        /// The line in the file.
        line: usize,
        /// The entry's position on its line.
        column: usize,
        /// The value found.
        value: f64,
    },
    /// An entry is below zero.
    #[error("line {line}, column {column}: negative RTT {value}")]
    Negative {
        /// The line in the file.
        line: usize,
        /// The entry's position on its line.
        column: usize,
        /// The value found.
        value: f64,
    },
    /// A row does not have as many entries as the first one.
    #[error("line {line}: {found} entries, but the first row has {expected}")]
    RowLength {
        /// The line in the file.
        line: usize,
        /// Entries on this line.
        found: usize,
        /// Entries on the first row.
        expected: usize,
    },
    /// The number of rows differs from the number of columns.
    #[error("{rows} rows of {columns} entries: the matrix must be square")]
    NotSquare {
        /// Rows found.
        rows: usize,
        /// Entries per row.
        columns: usize,
    },
    /// A diagonal entry (a host's RTT to itself) is not zero.
    #[error("line {line}, column {column}: diagonal entry {value} is not 0")]
    NonZeroDiagonal {
        /// The line in the file.
        line: usize,
        /// The entry's position on its line.
        column: usize,
        /// The value found.
        value: f64,
    },
}

/// A validated square matrix of RTTs between hosts, in microseconds.
#[derive(Clone, PartialEq, Eq)]
pub struct RttMatrix {
    n: usize,
    rtt_us: Vec<u32>,
}

impl fmt::Debug for RttMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RttMatrix({}×{})", self.n, self.n)
    }
}

impl RttMatrix {
    /// Reads and validates a matrix file: one row per line, entries in
    /// milliseconds separated by whitespace, blank lines ignored. The matrix
    /// must be square with a zero diagonal and finite, non-negative entries.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The PlanetLab matrix shipped with this crate ([`PLANETLAB_RTT_PATH`]).
    pub fn planetlab() -> Result<Self, LoadError> {
        Self::load(PLANETLAB_RTT_PATH)
    }

    /// Parses and validates matrix text in the format of [`Self::load`].
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        let mut rows: Vec<(usize, Vec<f64>)> = Vec::new();
        let mut width = None;
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let mut row = Vec::with_capacity(width.unwrap_or(0));
            for (cidx, token) in raw.split_whitespace().enumerate() {
                let column = cidx + 1;
                let value: f64 = token.parse().map_err(|_| LoadError::NotANumber {
                    line,
                    column,
                    token: token.to_owned(),
                })?;
                if !value.is_finite() {
                    return Err(LoadError::NotFinite {
                        line,
                        column,
                        value,
                    });
                }
                if value < 0.0 {
                    return Err(LoadError::Negative {
                        line,
                        column,
                        value,
                    });
                }
                row.push(value);
            }
            let expected = *width.get_or_insert(row.len());
            if row.len() != expected {
                return Err(LoadError::RowLength {
                    line,
                    found: row.len(),
                    expected,
                });
            }
            rows.push((line, row));
        }
        let Some(columns) = width else {
            return Err(LoadError::Empty);
        };
        if rows.len() != columns {
            return Err(LoadError::NotSquare {
                rows: rows.len(),
                columns,
            });
        }
        let n = columns;
        let mut rtt_us = Vec::with_capacity(n * n);
        for (i, (line, row)) in rows.iter().enumerate() {
            if row[i] != 0.0 {
                return Err(LoadError::NonZeroDiagonal {
                    line: *line,
                    column: i + 1,
                    value: row[i],
                });
            }
            rtt_us.extend(row.iter().map(|ms| ms_to_us(*ms)));
        }
        Ok(Self { n, rtt_us })
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the matrix has no host (never true for a loaded matrix).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The RTT from host `i` to host `j`, in microseconds.
    ///
    /// # Panics
    /// If `i` or `j` is not below [`Self::len`].
    pub fn rtt_us(&self, i: usize, j: usize) -> u32 {
        self.rtt_us[i * self.n + j]
    }

    /// The RTT from host `i` to host `j`.
    pub fn rtt(&self, i: usize, j: usize) -> Duration {
        Duration::from_micros(u64::from(self.rtt_us(i, j)))
    }
}

/// Sites and points of presence of a measured matrix's hosts, inferred from
/// its RTTs (see the module doc).
///
/// Every grouping is greedy and deterministic: hosts are taken in index
/// order, and each joins the group of the first earlier leader within the
/// radius, or leads a new group. Two hosts in one group are within twice
/// the radius of each other, and no chain of near hosts can stretch a
/// group further (as a transitive closure would).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixTopology {
    /// Each host's LAN (site) number.
    lan: Vec<usize>,
    /// Each host's position among its LAN's hosts.
    lan_rank: Vec<usize>,
    /// Hosts per LAN.
    lan_size: Vec<usize>,
    /// Each host's point of presence at each radius of
    /// [`MATRIX_POP_RADII_US`].
    pops: [Vec<usize>; MATRIX_POP_RADII_US.len()],
    /// The host each point of presence sits at (its group's leader), per
    /// radius.
    pop_hosts: [Vec<usize>; MATRIX_POP_RADII_US.len()],
}

impl MatrixTopology {
    /// Infers the topology of `m`.
    pub fn of(m: &RttMatrix) -> Self {
        let (lan, _) = greedy_groups(m, MATRIX_LAN_US);
        let groups = lan.iter().max().map_or(0, |g| g + 1);
        let mut lan_size = vec![0; groups];
        let mut lan_rank = Vec::with_capacity(lan.len());
        for &g in &lan {
            lan_rank.push(lan_size[g]);
            lan_size[g] += 1;
        }
        let pops = MATRIX_POP_RADII_US.map(|r| greedy_groups(m, r));
        Self {
            lan,
            lan_rank,
            lan_size,
            pop_hosts: pops.clone().map(|(_, leaders)| leaders),
            pops: pops.map(|(groups, _)| groups),
        }
    }

    /// Host `h`'s LAN number.
    pub fn lan(&self, h: usize) -> usize {
        self.lan[h]
    }

    /// Number of LANs.
    pub fn lans(&self) -> usize {
        self.lan_size.len()
    }
}

/// Greedy RTT groups of radius `radius_us` (see [`MatrixTopology`]): each
/// host's group, and each group's leader.
fn greedy_groups(m: &RttMatrix, radius_us: u32) -> (Vec<usize>, Vec<usize>) {
    let mut leaders: Vec<usize> = Vec::new();
    let groups = (0..m.len())
        .map(|h| {
            leaders
                .iter()
                .position(|&l| m.rtt_us(h, l) <= radius_us)
                .unwrap_or_else(|| {
                    leaders.push(h);
                    leaders.len() - 1
                })
        })
        .collect();
    (groups, leaders)
}

fn ms_to_us(ms: f64) -> u32 {
    // Saturating cast: an hour-long RTT is as good as infinite here.
    (ms * 1000.0).round().min(f64::from(u32::MAX)) as u32
}

/// A populated region of the synthetic sphere: a centre and a share of nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Region {
    /// Latitude of the centre, degrees north.
    pub lat_deg: f64,
    /// Longitude of the centre, degrees east.
    pub lon_deg: f64,
    /// Relative share of the nodes placed around this centre.
    pub weight: f64,
}

/// Parameters of [`LatencyModel::sphere`].
///
/// ```text
/// RTT(i, j) = 2 · route_inflation · great_circle_km(i, j) / km_per_ms
///           + access(i) + access(j)
/// access(x) = min(access_min_ms + Exp(mean = access_mean_ms), access_max_ms)
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SphereParams {
    /// Radius of the sphere: the Earth's, 6371 km.
    pub radius_km: f64,
    /// One-way propagation speed: light in fibre, about 200 km per ms.
    pub km_per_ms: f64,
    /// How much longer real routes are than the great circle. 1.3 puts the
    /// antipodes at about 260 ms before access delays.
    pub route_inflation: f64,
    /// Population centres. Real hosts cluster in a few regions, which is
    /// what gives Coral's 20 ms and 60 ms clusters something to find.
    pub regions: Vec<Region>,
    /// Share of nodes placed uniformly on the sphere instead of in a region.
    pub uniform_share: f64,
    /// Standard deviation of a node's offset from its region centre, in
    /// degrees of arc (7° ≈ 780 km).
    pub region_spread_deg: f64,
    /// Smallest access RTT contribution of one node, ms.
    pub access_min_ms: f64,
    /// Mean of the exponential part of the access RTT, ms.
    pub access_mean_ms: f64,
    /// Largest access RTT contribution of one node, ms.
    pub access_max_ms: f64,
}

impl Default for SphereParams {
    fn default() -> Self {
        let r = |lat_deg, lon_deg, weight| Region {
            lat_deg,
            lon_deg,
            weight,
        };
        Self {
            radius_km: 6371.0,
            km_per_ms: 200.0,
            route_inflation: 1.3,
            regions: vec![
                r(40.0, -77.0, 0.22),  // eastern North America
                r(37.0, -120.0, 0.13), // western North America
                r(50.0, 8.0, 0.25),    // Europe
                r(35.0, 125.0, 0.15),  // East Asia
                r(22.0, 78.0, 0.05),   // South Asia
                r(-23.0, -47.0, 0.05), // South America
                r(-33.0, 150.0, 0.05), // Oceania
            ],
            uniform_share: 0.10,
            region_spread_deg: 7.0,
            access_min_ms: 0.5,
            access_mean_ms: 4.0,
            access_max_ms: 30.0,
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Constant { rtt_us: u32 },
    Sphere(Box<SphereParams>),
    Matrix(Arc<RttMatrix>, Arc<MatrixTopology>),
}

/// Where a point of presence sits in the model.
#[derive(Clone, Copy, Debug)]
enum Pop {
    /// A point on the sphere.
    Point([f64; 3]),
    /// A host of the matrix.
    Host(usize),
}

/// Where one node sits in the model.
#[derive(Clone, Copy, Debug, Default)]
struct Place {
    /// Unit vector on the sphere (sphere model only).
    p: [f64; 3],
    /// Host in the matrix (matrix model only).
    host: u32,
    /// This node's access contribution to every RTT, µs.
    access_us: u32,
}

/// RTTs between simulated nodes, by node index. See the module doc.
#[derive(Clone, Debug)]
pub struct LatencyModel {
    kind: Kind,
    seed: u64,
    places: Vec<Place>,
}

impl LatencyModel {
    /// Every pair of distinct nodes has round-trip time `rtt`.
    pub fn constant(rtt: Duration) -> Self {
        let rtt_us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        Self {
            kind: Kind::Constant { rtt_us },
            seed: 0,
            places: Vec::new(),
        }
    }

    /// The synthetic sphere with the default [`SphereParams`].
    pub fn sphere(seed: u64) -> Self {
        Self::sphere_with(seed, SphereParams::default())
    }

    /// The synthetic sphere with explicit parameters.
    pub fn sphere_with(seed: u64, params: SphereParams) -> Self {
        Self {
            kind: Kind::Sphere(Box::new(params)),
            seed,
            places: Vec::new(),
        }
    }

    /// A measured matrix; node `i` sits at host `i % matrix.len()`. The seed
    /// draws the access delays of nodes beyond the first `matrix.len()`.
    pub fn matrix(matrix: Arc<RttMatrix>, seed: u64) -> Self {
        Self {
            kind: Kind::Matrix(Arc::clone(&matrix), Arc::new(MatrixTopology::of(&matrix))),
            seed,
            places: Vec::new(),
        }
    }

    /// A short name of the model for reports.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Constant { .. } => "constant",
            Kind::Sphere(_) => "sphere",
            Kind::Matrix(..) => "matrix",
        }
    }

    /// Places nodes `0..n` (drawing each one's position once). The simulator
    /// calls it when nodes are added; [`Self::rtt_us`] needs it first.
    pub fn ensure(&mut self, n: usize) {
        while self.places.len() < n {
            let i = self.places.len();
            let place = self.place(i);
            self.places.push(place);
        }
    }

    /// Where node `i` sits, as (site, its rank among the nodes at that
    /// site): for [`Self::matrix`] the LAN of its host `i % N`
    /// ([`MatrixTopology`]; node `i` is the `i / N`-th machine at that
    /// host), and a site of its own for the other models. The simulator
    /// gives each site its own /24, so that prefix hints (spec §5) mean
    /// what they mean on the Internet: the same network, not neighbouring
    /// array indices.
    pub fn site(&self, i: usize) -> (usize, usize) {
        match &self.kind {
            Kind::Matrix(m, topo) => {
                let n = m.len().max(1);
                let h = i % n;
                let lan = topo.lan[h];
                (lan, topo.lan_rank[h] + (i / n) * topo.lan_size[lan])
            }
            Kind::Constant { .. } | Kind::Sphere(_) => (i, 0),
        }
    }

    /// The routers on the last hops of the path toward node `i`, the one
    /// nearest the node first (see the module doc); empty for models
    /// without geography. Addresses are in 100.64.0.0/10, apart from the
    /// simulator's node addresses.
    pub fn routers(&self, i: usize) -> Vec<IpAddr> {
        self.pops(i).into_iter().map(|(addr, _)| addr).collect()
    }

    /// The routers on the last hops toward node `toward`
    /// ([`Self::routers`]), each with node `from`'s RTT to it, as a
    /// traceroute from `from` would time it.
    ///
    /// A node's traceroute toward itself times its own hops: the RTT to
    /// each point of presence, which sits at the centre of its grid cell
    /// on the sphere (the fibre delay there, inflated as every path is)
    /// and at its RTT group's first host on a matrix (that host's RTT),
    /// plus the node's access delay. Any other traceroute reaches those
    /// hops on its way to `toward`, so it times each one at the RTT to
    /// `toward` less `toward`'s own RTT to the hop: what remains of the
    /// path past a hop is the same whoever traces it. A hop that this
    /// leaves less time to reach than `from`'s access delay is not on the
    /// path (`from` is nearer `toward` than that hop is, so the path
    /// turns before it) and is not shown.
    pub fn traced_routers(&self, toward: usize, from: usize) -> Vec<Router> {
        let (Some(dst), Some(src)) = (self.places.get(toward), self.places.get(from)) else {
            return Vec::new();
        };
        let end_us = self.rtt_us(from, toward);
        self.pops(toward)
            .into_iter()
            .filter_map(|(addr, pop)| {
                let path_us = match (&self.kind, pop) {
                    (Kind::Sphere(params), Pop::Point(p)) => propagation_us(params, dst.p, p),
                    (Kind::Matrix(m, _), Pop::Host(h)) => u64::from(m.rtt_us(dst.host as usize, h)),
                    _ => 0,
                };
                let own_us = path_us + u64::from(dst.access_us);
                let us = if from == toward {
                    own_us
                } else {
                    end_us
                        .checked_sub(own_us)
                        .filter(|&us| us >= u64::from(src.access_us))?
                };
                Some(Router {
                    addr,
                    rtt: Some(Duration::from_micros(us)),
                })
            })
            .collect()
    }

    /// The points of presence on the last hops toward node `i`, nearest it
    /// first: each one's address and where it sits.
    fn pops(&self, i: usize) -> Vec<(IpAddr, Pop)> {
        let Some(place) = self.places.get(i) else {
            return Vec::new();
        };
        let pop_addr = |hop: usize, pop: u64| {
            let h = mix64(hop as u64, pop);
            // 100.64.0.0/10: the top 10 bits fixed, 22 bits of the hash.
            IpAddr::V4(Ipv4Addr::from(0x6440_0000u32 | (h as u32 & 0x003f_ffff)))
        };
        match &self.kind {
            Kind::Sphere(_) => {}
            Kind::Matrix(_, topo) => {
                // A tag keeps matrix PoPs apart from sphere cells.
                return (0..MATRIX_POP_RADII_US.len())
                    .map(|hop| {
                        let group = topo.pops[hop][place.host as usize];
                        (
                            pop_addr(hop, (1 << 40) | group as u64),
                            Pop::Host(topo.pop_hosts[hop][group]),
                        )
                    })
                    .collect();
            }
            Kind::Constant { .. } => return Vec::new(),
        }
        let [x, y, z] = place.p;
        let lat = z.clamp(-1.0, 1.0).asin().to_degrees();
        let lon = y.atan2(x).to_degrees();
        ROUTER_CELLS_DEG
            .iter()
            .enumerate()
            .map(|(hop, &deg)| {
                let (row, col) = (((lat + 90.0) / deg).floor(), ((lon + 180.0) / deg).floor());
                let cell = row as i64 * 4096 + col as i64;
                // The middle of the part of the cell on the globe: a grid
                // that does not divide 180° or 360° ends in a narrower row
                // or column.
                let mid = |i: f64, span: f64| (i * deg + ((i + 1.0) * deg).min(span)) / 2.0;
                let centre = unit_vector(
                    (mid(row, 180.0) - 90.0).to_radians(),
                    (mid(col, 360.0) - 180.0).to_radians(),
                );
                (pop_addr(hop, cell as u64), Pop::Point(centre))
            })
            .collect()
    }

    fn place(&self, i: usize) -> Place {
        let mut rng = Rng::new(mix64(self.seed, i as u64));
        match &self.kind {
            Kind::Constant { .. } => Place::default(),
            Kind::Sphere(params) => sphere_place(params, &mut rng),
            Kind::Matrix(m, _) => {
                let n = m.len().max(1);
                let host = (i % n) as u32;
                let access_us = if i < n {
                    0
                } else {
                    let (lo, hi) = MATRIX_EXTRA_ACCESS_MS;
                    ms_to_us(lo + (hi - lo) * rng.unit_f64())
                };
                Place {
                    p: [0.0; 3],
                    host,
                    access_us,
                }
            }
        }
    }

    /// Round-trip time between nodes `i` and `j` in microseconds (0 when
    /// `i == j`).
    ///
    /// # Panics
    /// If [`Self::ensure`] has not placed both nodes.
    pub fn rtt_us(&self, i: usize, j: usize) -> u64 {
        if i == j {
            return 0;
        }
        match &self.kind {
            Kind::Constant { rtt_us } => u64::from(*rtt_us),
            Kind::Sphere(params) => {
                let (a, b) = (&self.places[i], &self.places[j]);
                propagation_us(params, a.p, b.p) + u64::from(a.access_us) + u64::from(b.access_us)
            }
            Kind::Matrix(m, _) => {
                let (a, b) = (&self.places[i], &self.places[j]);
                u64::from(m.rtt_us(a.host as usize, b.host as usize))
                    + u64::from(a.access_us)
                    + u64::from(b.access_us)
            }
        }
    }

    /// Round-trip time between nodes `i` and `j`.
    pub fn rtt(&self, i: usize, j: usize) -> Duration {
        Duration::from_micros(self.rtt_us(i, j))
    }

    /// One-way delay from node `i` to node `j`, in microseconds: RTT / 2.
    pub fn one_way_us(&self, i: usize, j: usize) -> u64 {
        self.rtt_us(i, j) / 2
    }
}

/// The fibre RTT between two points of the sphere, µs: the great-circle
/// distance, inflated for indirect routes, both ways.
fn propagation_us(params: &SphereParams, a: [f64; 3], b: [f64; 3]) -> u64 {
    let dot = (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]).clamp(-1.0, 1.0);
    let km = dot.acos() * params.radius_km;
    let prop_ms = 2.0 * params.route_inflation * km / params.km_per_ms;
    (prop_ms * 1000.0).round() as u64
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.unit_f64(); // (0, 1]: keeps ln finite
    let u2 = rng.unit_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn unit_vector(lat_rad: f64, lon_rad: f64) -> [f64; 3] {
    [
        lat_rad.cos() * lon_rad.cos(),
        lat_rad.cos() * lon_rad.sin(),
        lat_rad.sin(),
    ]
}

fn normalize(v: [f64; 3]) -> [f64; 3] {
    let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    if len == 0.0 {
        [1.0, 0.0, 0.0]
    } else {
        [v[0] / len, v[1] / len, v[2] / len]
    }
}

fn sphere_place(params: &SphereParams, rng: &mut Rng) -> Place {
    let total: f64 = params.regions.iter().map(|r| r.weight.max(0.0)).sum();
    let p = if params.regions.is_empty() || total <= 0.0 || rng.unit_f64() < params.uniform_share {
        // Uniform on the sphere: a normalized 3-D Gaussian.
        normalize([gaussian(rng), gaussian(rng), gaussian(rng)])
    } else {
        let mut pick = rng.unit_f64() * total;
        let mut region = params.regions[params.regions.len() - 1];
        for r in &params.regions {
            let w = r.weight.max(0.0);
            if pick < w {
                region = *r;
                break;
            }
            pick -= w;
        }
        let c = unit_vector(region.lat_deg.to_radians(), region.lon_deg.to_radians());
        // Offset the centre by a small Gaussian in its tangent plane.
        let sigma = params.region_spread_deg.to_radians();
        let east = normalize([-c[1], c[0], 0.0]);
        let north = [
            c[1] * east[2] - c[2] * east[1],
            c[2] * east[0] - c[0] * east[2],
            c[0] * east[1] - c[1] * east[0],
        ];
        let (de, dn) = (gaussian(rng) * sigma, gaussian(rng) * sigma);
        normalize([
            c[0] + de * east[0] + dn * north[0],
            c[1] + de * east[1] + dn * north[1],
            c[2] + de * east[2] + dn * north[2],
        ])
    };
    let exp = -params.access_mean_ms * (1.0 - rng.unit_f64()).ln();
    let access_ms = (params.access_min_ms + exp).min(params.access_max_ms);
    Place {
        p,
        host: 0,
        access_us: ms_to_us(access_ms),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::metrics::percentile;

    fn rtts_ms(model: &mut LatencyModel, n: usize) -> Vec<f64> {
        model.ensure(n);
        let mut v = Vec::new();
        for i in 0..n {
            for j in (i + 1)..n {
                v.push(model.rtt_us(i, j) as f64 / 1000.0);
            }
        }
        v.sort_by(f64::total_cmp);
        v
    }

    #[test]
    fn sphere_spread_is_realistic() {
        let mut m = LatencyModel::sphere(42);
        let v = rtts_ms(&mut m, 400);
        let (min, p50, max) = (v[0], percentile(&v, 50.0), v[v.len() - 1]);
        let under = |ms: f64| v.iter().filter(|x| **x < ms).count() as f64 / v.len() as f64;
        eprintln!(
            "sphere: min {min:.1} p50 {p50:.1} max {max:.1} ms; <20ms {:.3} <60ms {:.3}",
            under(20.0),
            under(60.0)
        );
        assert!(min < 5.0, "min {min}");
        assert!((60.0..160.0).contains(&p50), "median {p50}");
        assert!((200.0..=330.0).contains(&max), "max {max}");
        // Clustered placement leaves a few percent of pairs within 20 ms.
        assert!((0.01..0.2).contains(&under(20.0)), "{}", under(20.0));
    }

    #[test]
    fn sphere_is_symmetric_seeded_and_order_independent() {
        let mut a = LatencyModel::sphere(7);
        let mut b = LatencyModel::sphere(7);
        a.ensure(50);
        b.ensure(10);
        b.ensure(50);
        for i in 0..50 {
            assert_eq!(a.rtt_us(i, i), 0);
            for j in 0..50 {
                assert_eq!(a.rtt_us(i, j), a.rtt_us(j, i));
                assert_eq!(a.rtt_us(i, j), b.rtt_us(i, j));
            }
        }
        let mut c = LatencyModel::sphere(8);
        c.ensure(50);
        assert!((0..50).any(|j| c.rtt_us(0, j) != a.rtt_us(0, j)));
        assert_eq!(a.one_way_us(1, 2), a.rtt_us(1, 2) / 2);
    }

    #[test]
    fn planetlab_loads_and_wraps() {
        let m = Arc::new(RttMatrix::planetlab().unwrap());
        assert_eq!(m.len(), 245);
        let mut model = LatencyModel::matrix(m.clone(), 3);
        model.ensure(600);
        // The first N nodes see the data exactly.
        assert_eq!(model.rtt_us(0, 1), u64::from(m.rtt_us(0, 1)));
        assert_eq!(m.rtt(0, 1), Duration::from_micros(121_445));
        // Node 245 is a second machine at host 0.
        let extra = model.rtt_us(0, 245);
        assert!((500..=5000).contains(&extra), "{extra}");
        let d = model.rtt_us(245, 1) - u64::from(m.rtt_us(0, 1));
        assert_eq!(d, extra);
        let v = rtts_ms(&mut LatencyModel::matrix(m, 3), 245);
        let p50 = percentile(&v, 50.0);
        assert!((120.0..140.0).contains(&p50), "{p50}");
    }

    #[test]
    fn matrix_sites_and_routers_are_inferred_from_rtts() {
        // Hosts 0 and 1 share a LAN (0.2 ms); 2 is 2 ms away (a metro PoP
        // of radius 3 ms, not the 1 ms one); 3 is 8 ms from 0 but 10 from 2
        // (greedy: it joins 0's 9 ms group); 4 is far.
        let m = RttMatrix::parse(
            "0 0.2 2 8 100\n0.2 0 2 8 100\n2 2 0 10 100\n8 8 10 0 100\n100 100 100 100 0\n",
        )
        .unwrap();
        let topo = MatrixTopology::of(&m);
        assert_eq!(
            (0..5).map(|h| topo.lan(h)).collect::<Vec<_>>(),
            [0, 0, 1, 2, 3]
        );
        assert_eq!(topo.lans(), 4);
        assert_eq!(topo.pops[0], [0, 0, 1, 2, 3]);
        assert_eq!(topo.pops[1], [0, 0, 0, 1, 2]);
        assert_eq!(topo.pops[2], [0, 0, 0, 0, 1]);
        assert_eq!(topo.pops[3], [0, 0, 0, 0, 1]);
        assert_eq!(topo.pops[4], [0, 0, 0, 0, 1]);
        let mut model = LatencyModel::matrix(Arc::new(m), 1);
        model.ensure(10);
        // One /24 per LAN, a distinct rank per node, extra machines included.
        let sites: Vec<(usize, usize)> = (0..10).map(|i| model.site(i)).collect();
        assert_eq!(&sites[..5], [(0, 0), (0, 1), (1, 0), (2, 0), (3, 0)]);
        assert_eq!(
            &sites[5..7],
            [(0, 2), (0, 3)],
            "second machines at hosts 0, 1"
        );
        let r: Vec<Vec<IpAddr>> = (0..5).map(|i| model.routers(i)).collect();
        assert!(r.iter().all(|v| v.len() == 5));
        assert_eq!(r[0], r[1], "one LAN, one path");
        assert_ne!(r[0][0], r[2][0]);
        assert_eq!(r[0][1..], r[2][1..], "host 2 shares the 3 ms PoP and up");
        assert_eq!(r[0][2], r[3][2]);
        assert!(
            (0..5).all(|h| r[0][h] != r[4][h]),
            "100 ms: host 4 shares none"
        );
        assert_eq!(model.routers(5), r[0], "a second machine at host 0");
    }

    #[test]
    fn a_trace_times_the_hops_on_its_path_and_only_those() {
        let m = Arc::new(RttMatrix::planetlab().unwrap());
        let mut models = [LatencyModel::matrix(m, 3), LatencyModel::sphere(3)];
        for model in &mut models {
            // The matrix's 245 hosts, then extra machines behind access links.
            model.ensure(300);
            let (mut shown, mut hidden) = (0, 0);
            for toward in (0..300).step_by(7) {
                let own = model.traced_routers(toward, toward);
                assert_eq!(own.len(), model.routers(toward).len());
                for from in (1..300).step_by(11).filter(|&f| f != toward) {
                    let end = model.rtt_us(from, toward);
                    let access = u64::from(model.places[from].access_us);
                    let traced = model.traced_routers(toward, from);
                    for hop in &own {
                        let own_us = hop.rtt.unwrap().as_micros() as u64;
                        match traced.iter().find(|t| t.addr == hop.addr) {
                            Some(t) => {
                                shown += 1;
                                // What is left past the hop is the target's own.
                                let us = t.rtt.unwrap().as_micros() as u64;
                                assert_eq!(end - us, own_us);
                                assert!(us >= access);
                            }
                            None => {
                                hidden += 1;
                                assert!(end < own_us + access, "{end} {own_us} {access}");
                            }
                        }
                    }
                }
            }
            assert!(shown > 0 && hidden > 0, "{shown} shown, {hidden} hidden");
        }
    }

    #[test]
    fn constant_model() {
        let m = LatencyModel::constant(Duration::from_millis(40));
        assert_eq!(m.rtt(3, 9), Duration::from_millis(40));
        assert_eq!(m.one_way_us(3, 9), 20_000);
        assert_eq!(m.rtt_us(4, 4), 0);
    }

    fn load_text(text: &str) -> Result<RttMatrix, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.tsv");
        std::fs::write(&path, text).unwrap();
        RttMatrix::load(&path)
    }

    #[test]
    fn loader_accepts_a_small_matrix() {
        let m = load_text("0\t1.5\n1.5\t0\n\n").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.rtt_us(0, 1), 1500);
    }

    #[test]
    fn loader_errors_name_line_and_column() {
        let e = load_text("0 1\n1 x\n").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::NotANumber {
                    line: 2,
                    column: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "line 2, column 2: \"x\" is not a number");

        let e = load_text("0 1\n1 0 3\n").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::RowLength {
                    line: 2,
                    found: 3,
                    expected: 2
                }
            ),
            "{e}"
        );

        let e = load_text("0 1 2\n1 0 3\n").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::NotSquare {
                    rows: 2,
                    columns: 3
                }
            ),
            "{e}"
        );

        let e = load_text("0 1\n1 0.5\n").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::NonZeroDiagonal {
                    line: 2,
                    column: 2,
                    ..
                }
            ),
            "{e}"
        );

        let e = load_text("\n0 -1\n1 0\n").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::Negative {
                    line: 2,
                    column: 2,
                    ..
                }
            ),
            "{e}"
        );

        let e = load_text("0 inf\n1 0\n").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::NotFinite {
                    line: 1,
                    column: 2,
                    ..
                }
            ),
            "{e}"
        );
        let e = load_text("0 NaN\n1 0\n").unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::NotFinite {
                    line: 1,
                    column: 2,
                    ..
                }
            ),
            "{e}"
        );

        let e = load_text("  \n\n").unwrap_err();
        assert!(matches!(e, LoadError::Empty), "{e}");

        let e = RttMatrix::load("/nonexistent/coral/m.tsv").unwrap_err();
        assert!(matches!(e, LoadError::Io { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/coral/m.tsv"), "{e}");
    }
}
