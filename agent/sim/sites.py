"""Where the simulated terminals stand: one district, modelled on Chengdu's Wuhou district.

Self-service terminals stand in the district government service hall (政务服务大厅), in every
street's convenience-service centre (街道便民服务中心) and in some communities (社区). A fleet of N
terminals is spread over these sites by weight (the hall gets the most, a community the fewest),
deterministically, so `make-passwd` and the simulator agree on the ids without sharing a file.

Ids: the hall's terminals are `WH-HALL-01…`, a street centre's `WH-JD-YL-03` (JD = 街道, YL =
玉林), a community's `WH-SQ-YLBL-02` (SQ = 社区, YLBL = 玉林北路).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

SiteKind = Literal["hall", "street_centre", "community"]

DISTRICT = "武侯区"
DISTRICT_CODE = "WH"

#: Streets (街道) with the pinyin initials used in ids, and three communities of each.
STREETS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("浆洗街街道", "JXJ", (("洗面桥社区", "XMQ"), ("锦里社区", "JL"), ("浆洗街社区", "JXJS"))),
    ("望江路街道", "WJL", (("望江楼社区", "WJLS"), ("新南门社区", "XNM"), ("共和路社区", "GHL"))),
    ("玉林街道", "YL", (("玉林北路社区", "YLBL"), ("玉林东路社区", "YLDL"), ("倪家桥社区", "NJQ"))),
    ("跳伞塔街道", "TST", (("科华北路社区", "KHBL"), ("跳伞塔社区", "TSTS"), ("新南社区", "XN"))),
    (
        "火车南站街道",
        "HCNZ",
        (("桐梓林社区", "TZL"), ("火车南站社区", "HCNZS"), ("龙腾社区", "LT")),
    ),
    ("双楠街道", "SN", (("双楠社区", "SNS"), ("大石西路社区", "DSXL"), ("逸都社区", "YD"))),
    ("晋阳街道", "JY", (("晋阳社区", "JYS"), ("吉福社区", "JF"), ("晋吉社区", "JJ"))),
    ("红牌楼街道", "HPL", (("红牌楼社区", "HPLS"), ("佳灵路社区", "JLL"), ("太平园社区", "TPY"))),
    ("簇桥街道", "CQ", (("簇桥社区", "CQS"), ("七里社区", "QL"), ("锦城社区", "JC"))),
    ("机投桥街道", "JTQ", (("机投桥社区", "JTQS"), ("铁佛社区", "TF"), ("武青社区", "WQ"))),
    ("金花桥街道", "JHQ", (("金花桥社区", "JHQS"), ("江安河社区", "JAH"), ("金兴社区", "JX"))),
    ("簇锦街道", "CJ", (("簇锦社区", "CJS"), ("顺江社区", "SJ"), ("高碑社区", "GB"))),
    ("华兴街道", "HX", (("华兴社区", "HXS"), ("兴元社区", "XY"), ("凉井社区", "LJ"))),
)

#: How many terminals a site gets relative to a community.
WEIGHTS: dict[SiteKind, int] = {"hall": 8, "street_centre": 3, "community": 1}


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    kind: SiteKind
    street: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "street": self.street}


@dataclass(frozen=True)
class TerminalSpec:
    terminal_id: str
    site: Site


def sites() -> list[Site]:
    """Every site of the district: the hall, then each street's centre and its communities."""
    out = [Site(f"{DISTRICT_CODE}-HALL", f"{DISTRICT}政务服务中心政务服务大厅", "hall")]
    for street, code, communities in STREETS:
        out.append(
            Site(f"{DISTRICT_CODE}-JD-{code}", f"{street}便民服务中心", "street_centre", street)
        )
        for name, ccode in communities:
            out.append(Site(f"{DISTRICT_CODE}-SQ-{ccode}", f"{street}{name}", "community", street))
    return out


def _shares(n: int, weights: list[int]) -> list[int]:
    """Split n by weight with the largest-remainder method (ties go to the earlier site)."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def layout(n: int) -> list[TerminalSpec]:
    """N terminals spread over the district's sites; the same n always gives the same ids."""
    if n < 0:
        raise ValueError("the number of terminals must not be negative")
    all_sites = sites()
    counts = _shares(n, [WEIGHTS[s.kind] for s in all_sites])
    specs: list[TerminalSpec] = []
    for site, count in zip(all_sites, counts, strict=True):
        specs.extend(TerminalSpec(f"{site.id}-{k:02d}", site) for k in range(1, count + 1))
    return specs
