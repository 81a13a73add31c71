#!/usr/bin/env python3
"""Deterministic synthetic catalogue generator for deltacache benchmarks and tests.

Writes one JSON object per line (JSONL), about 450 bytes each:

    {"id": "item-000001", "title": "...", "category": "database",
     "text": "...", "price": 42.17, "tags": ["replica", "backup"]}

Text is drawn from a built-in vocabulary of a few thousand realistic
(software/hardware catalogue) words with a Zipf-like frequency
distribution. Each of the 12 categories has its own topical sub-vocabulary
that is mixed with the global one, so similarity search gives meaningful
results. Optionally writes Q search queries of 2-6 words drawn from the same
vocabulary, one per line.

Output depends only on --n, --seed and --queries (stdlib ``random.Random``
seeded explicitly; no hash randomisation, no clock, no system word lists; an
item's content does not depend on --n, so a smaller --n gives a prefix).
Items are generated in independently seeded blocks of 10,000, optionally by
--jobs worker processes, and streamed in order, so memory stays bounded (~30 MB
per process) and the output is byte-identical for any --jobs. About 30-70 s
per million items per core, depending on the machine.

``--vocab heavy`` draws from the same words with a much heavier head, the way a
real catalogue's frequent words dominate it: the global Zipf law has no rank
offset and a steeper slope (s=1.2, q=0: the top word takes ~17% of the
global draws instead of ~5%), only 15% of an item's words are topical (45%
by default), the function words ("the", "and", ...) stay in the text, and
every query is 2 words drawn from the same heavy distribution (20% topical).
Build such a corpus with ``build-base --stop-words none`` (scikit-learn's
own default) to keep those frequent words in the index. The default,
``--vocab catalogue``, is unchanged.

Rerun, e.g.:

    python3 scripts/gen_corpus.py --n 1000000 --seed 42 --out /tmp/items.jsonl \\
        --queries 10000 --queries-out /tmp/queries.txt

``--out -`` writes items to stdout.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import os
import random
import sys
from typing import Iterator

# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

# Words marked with a trailing "+" are countable nouns and also appear in
# plural form; verbs (VERBS) also appear as -s/-ed/-ing forms.
CATEGORIES: dict[str, str] = {
    "database": """query+ index schema+ table+ column+ row+ transaction+
        replica+ replication shard+ sharding postgres mysql sqlite leveldb
        rocksdb btree+ lsm compaction snapshot+ backup+ migration+ join+
        cursor+ commit+ rollback+ isolation serializable deadlock+ lock+ vacuum
        planner+ optimizer+ partition+ primary foreign key+ constraint+
        trigger+ procedure+ view+ materialized wal checkpoint+ tuple+ sql nosql
        document+ collection+ relational embedded durability consistency
        predicate+ aggregate+ sequence+ catalog+ tablespace+ savepoint+
        upsert+ scan+ lookup+ database+ datastore+ keyspace+ bloom filter+
        timestamp+ mvcc""",
    "networking": """packet+ router+ switch firewall+ latency bandwidth
        throughput tcp udp quic http dns proxy+ gateway+ subnet+ vlan+ routing
        bgp ipv4 ipv6 socket+ handshake+ tls certificate+ ethernet fiber
        wireless wifi antenna+ mesh tunnel+ vpn nat port+ interface+ congestion
        jitter multicast broadcast balancer+ peering uplink+ cable+ modem+
        hop+ route+ frame+ datagram+ mtu address+ hostname+ resolver+
        endpoint+ backbone+ transceiver+ optical copper topology+ loopback
        anycast unicast""",
    "storage": """disk+ drive+ ssd nvme raid volume+ block+ filesystem+ ext4 zfs
        btrfs inode+ sector+ cache+ tier+ archive+ tape+ object+ bucket+ blob+
        erasure coding parity mirror+ stripe+ capacity terabyte+ petabyte+ iops
        dedup deduplication compression mount+ nfs iscsi san nas controller+
        firmware spindle+ flash durability replica+ quota+ directory+ file+
        journal+ extent+ allocation sequential random throughput cold hot
        warm lifecycle retention""",
    "security": """password+ token+ secret+ vault+ audit+ policy+ role+
        permission+ authentication authorization oauth saml sso mfa encryption
        cipher+ aes rsa signature+ hash+ sha256 vulnerability+ exploit+ patch+
        malware phishing intrusion+ detection scanner+ sandbox+ compliance gdpr
        soc2 threat+ incident+ forensic attacker+ credential+ rotation zero
        trust privilege+ escalation firewall+ honeypot+ ransomware breach+
        identity+ session+ cookie+ nonce+ keychain+ hardening baseline+
        allowlist+ denylist+ pentest+ auditor+ tamper""",
    "monitoring": """metric+ alert+ dashboard+ trace+ tracing span+ log+
        logging histogram+ counter+ gauge+ prometheus grafana exporter+ scrape+
        probe+ uptime sla slo error+ budget+ anomaly+ threshold+ pager+ oncall
        telemetry sampling retention cardinality label+ heartbeat+ health
        check+ status baseline+ percentile+ p99 aggregation rollup+ agent+
        collector+ observability signal+ event+ timeline+ outage+ postmortem+
        escalation incident+ sensor+ panel+ query+ annotation+""",
    "compute": """cpu+ core+ thread+ processor+ virtual machine+ vm container+
        kubernetes pod+ node+ cluster+ scheduler+ autoscaling instance+ spot
        reserved serverless function+ lambda+ runtime+ memory ram heap+ stack+
        kernel+ hypervisor+ gpu+ accelerator+ vcpu+ workload+ batch job+ queue+
        worker+ executor+ affinity numa hyperthreading benchmark+ performance
        idle utilization capacity preemption sandbox+ interpreter+ compiler+
        binary+ process+ coroutine+ fiber+ socket+ tenant+ quota+""",
    "analytics": """report+ chart+ warehouse+ lake+ etl pipeline+ ingestion
        dataframe+ cohort+ funnel+ segment+ kpi forecast+ regression+ trend+
        seasonal olap cube+ dimension+ measure+ spark parquet columnar
        notebook+ visualization+ insight+ revenue churn conversion+
        attribution experiment+ sample+ statistic+ median+ variance outlier+
        correlation+ model+ prediction+ feature+ dataset+ histogram+ pivot+
        join+ metric+ query+ sql dashboard+ quarter+ customer+ retention
        baseline+ anomaly+ cluster+ classifier+ embedding+""",
    "messaging": """message+ topic+ broker+ kafka rabbitmq pubsub subscriber+
        publisher+ consumer+ producer+ offset+ delivery acknowledgement+ retry+
        dead letter+ ordering exactly once idempotent stream+ event+ webhook+
        notification+ email+ sms push inbox+ channel+ fanout backpressure
        throttle+ rate+ limit+ payload+ envelope+ avro protobuf serialization
        durable queue+ partition+ replay+ log+ schema+ header+ routing
        exchange+ binding+ mailbox+ chat+ thread+ reply+""",
    "frontend": """browser+ javascript typescript react component+ render+
        layout+ css stylesheet+ html dom widget+ button+ form+ modal+
        navigation responsive accessibility theme+ font+ icon+ animation+
        bundle+ webpack hydration state+ hook+ prop+ template+ page+ tab+
        scroll viewport+ pixel+ canvas+ svg image+ lazy loading tooltip+
        dropdown+ checkbox+ input+ keyboard+ menu+ sidebar+ header+ footer+
        grid+ flexbox typography palette+ dark light mode+""",
    "mobile": """android ios iphone tablet+ app+ apk swift kotlin gesture+
        touch screen+ battery+ offline sync camera+ gps location+ sensor+
        accelerometer+ bluetooth nfc wallet+ store+ install+ background+
        foreground deep link+ splash orientation+ portrait landscape haptic
        vibration cellular roaming signal+ biometric fingerprint+ face+
        phone+ smartphone+ charger+ notification+ permission+ widget+ update+
        emulator+ simulator+ crash+ release+""",
    "devops": """deploy deployment+ release+ rollout+ canary+ build+ artifact+
        registry+ docker terraform ansible helm manifest+ config+
        configuration+ environment+ staging production ci cd jenkins git
        branch+ merge+ review+ test+ lint blue green infrastructure
        provisioning script+ automation runbook+ toil drift versioning tag+
        changelog+ pipeline+ image+ container+ secret+ rollback+ hotfix+
        repository+ commit+ pull request+ cron+ playbook+ module+""",
    "hardware": """motherboard+ chassis rack+ server+ blade+ psu fan+ cooling
        thermal heatsink+ voltage+ watt+ power supply dimm+ ecc pcie lane+
        slot+ bay+ sled+ mouse mice monitor+ display+ hdmi usb thunderbolt
        adapter+ charger+ dock+ printer+ headset+ speaker+ microphone+ webcam+
        laptop+ desktop+ workstation+ enclosure+ warranty cable+ keyboard+
        processor+ memory battery+ screen+ port+ connector+ chip+ sensor+
        board+ fanless rugged""",
}

FUNCTION_WORDS = """the and of to a in for with on is by that this it as from
    at be are or an your our all can more no not but up out into over than each
    any new very most its which also without via per across between""".split()

GENERAL_WORDS = """system+ service+ support team+ user+ customer+ data time+
    version+ plan+ tool+ platform+ solution+ product+ setup+ option+ mode+
    level+ process+ network+ client+ application+ request+ response+
    resource+ file+ record+ field+ value+ type+ format+ source+ target+
    result+ change+ issue+ problem+ design+ pattern+ library+ module+ package+
    api+ endpoint+ integration+ plugin+ extension+ connector+ driver+ engine+
    framework+ edition+ license+ subscription+ price+ cost+ month+ year+ day+
    hour+ minute+ second+ week+ region+ zone+ site+ office+ enterprise+
    business+ company+ partner+ vendor+ market+ industry+ community+
    developer+ engineer+ administrator+ operator+ manager+ analyst+ student+
    startup+ scale growth speed reliability availability quality safety
    control+ access workflow+ console+ command+ shell+ terminal+ window+ cloud+
    edge+ premise+ account+ project+ kit+ suite+ appliance+ unit+ series
    family line+ generation+ guide+ tutorial+ manual+ documentation example+
    demo+ trial+ upgrade+ addon+ bundle+ license+ seat+ member+ group+
    organization+ department+ school+ university+ hospital+ bank+ retailer+
    store+ shop+ warehouse+ factory+ fleet+ vehicle+ device+ sensor+ gadget+
    camera+ drone+ robot+ printer+ scanner+ router+ modem+ phone+ watch+
    speaker+ light+ thermostat+ lock+ doorbell+ home+ building+ city+ country+
    world team+ people person+ staff hardware software firmware content
    media video+ audio music photo+ picture+ document+ spreadsheet+
    presentation+ note+ calendar+ contact+ message+ task+ ticket+ case+
    order+ invoice+ payment+ refund+ shipment+ delivery return+ discount+
    coupon+ offer+ deal+ sale+ review+ rating+ feedback question+ answer+
    comment+ post+ article+ blog+ news story+ idea+ goal+ step+ stage+ phase+
    rule+ limit+ risk+ benefit+ advantage+ reason+ way+ method+ approach+
    strategy+ practice+ experience+ skill+ training course+ lesson+ career+
    job+ role+ salary+ budget+ investment+ profit+ loss+ share+ stock+ fund+
    energy water air heat noise weight size+ color+ shape+ material+ metal+
    plastic+ glass+ wood paper+ box+ case+ bag+ kit+ pack+ set+ pair+ piece+
    item+ part+ component+ accessory spare+ replacement+ model+ variant+
    standard+ protocol+ specification+""".split()

ADJECTIVES = """fast slow simple secure reliable scalable flexible powerful
    lightweight modern legacy open free premium standard advanced basic
    professional compact portable robust efficient automatic manual real
    distributed centralized local remote global native hybrid managed hosted
    private public shared dedicated redundant resilient consistent eventual
    strong weak high low large small big tiny full partial quick smart
    intelligent easy complex rich clean stable beta experimental certified
    compatible unified integrated modular extensible configurable customizable
    interactive visual graphical minimal optimized accurate precise seamless
    instant continuous incremental parallel concurrent asynchronous synchronous
    persistent ephemeral immutable transparent elastic cheap affordable popular
    trusted proven ultimate essential complete new old early late daily weekly
    monthly annual safe quiet loud bright dark heavy light thin thick wide
    narrow long short deep shallow hard soft warm cold hot fresh
    original official certified refurbished wireless waterproof durable
    ergonomic sleek elegant classic vintage digital analog mobile physical
    virtual dynamic static automated secure encrypted anonymous friendly
    responsive helpful useful powerful practical affordable generous limited
    unlimited available ready enterprise commercial industrial educational
    personal creative flexible careful detailed comprehensive
    straightforward intuitive""".split()

ADVERB_BASES = """fast quick easy simple secure reliable efficient automatic
    seamless instant continuous incremental parallel concurrent asynchronous
    synchronous transparent precise accurate consistent safe quiet careful
    practical comprehensive intuitive dynamic static virtual physical daily
    weekly monthly""".split()

VERBS = """build run manage monitor deploy scale store index search query filter
    sort sync backup restore recover migrate upgrade install configure automate
    secure protect encrypt compress stream process analyze visualize connect
    integrate route balance cache replicate shard partition schedule trigger
    notify alert track measure report export import transform validate verify
    debug profile optimize tune test simulate generate launch provision isolate
    detect prevent block allow enable disable support handle reduce improve
    boost accelerate simplify streamline extend customize share publish
    subscribe collect aggregate forward retry deliver render ship buy sell
    order pay save spend earn offer provide include contain require need want
    help start stop open close create delete remove add update edit copy move
    load read write print scan send receive upload download sign login
    register check review compare choose select prefer recommend learn teach
    train play watch listen design develop plan maintain repair replace clean
    charge power mount attach cover fit hold carry lift pack wrap power
    work serve host rent lease finance insure approve reject""".split()

COMPOUNDS = """microservice+ multicloud autoscale autoscaler+ multitenant
    subnetwork+ superuser+ preload interconnect+ coprocessor+ subprocess+
    subtask+ multicore multithreaded microkernel+ autoheal prefetch
    autodiscovery superscalar microbenchmark+ subdomain+ interop multiregion
    multiplatform autocomplete microcontroller+ prebuilt offboard onboarding
    workload+ dataset+ backend+ frontend+ middleware toolchain+ toolkit+
    codebase+ sandbox+ runtime+ hotspot+ keyboard+ touchscreen+ smartwatch+
    headphone+ earbud+ notebook+ checkout+ storefront+ marketplace+
    subscription+ username+ passphrase+ timeout+ failover+ uptime downtime
    throughput""".split()

CODES = """v1 v2 v3 2023 2024 2025 64gb 128gb 256gb 1tb 10gbe 25gbe 1u 2u 4u 4k
    8k x86 arm64 k8s 3d 5g 100g usb3 wifi6 ddr5 pcie4 h100 tier2 s3 ec2""".split()


def _plural(w: str) -> str:
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return w + "es"
    if len(w) > 2 and w.endswith("y") and w[-2] not in "aeiou":
        return w[:-1] + "ies"
    return w + "s"


def _expand(words) -> list[str]:
    """Expand 'noun+' markers into singular and plural forms."""
    out = []
    for w in words:
        if w.endswith("+"):
            w = w[:-1]
            out += [w, _plural(w)]
        else:
            out.append(w)
    return out


def _verb_forms(w: str) -> list[str]:
    if w.endswith("e"):
        ed, ing = w + "d", w[:-1] + "ing"
    elif len(w) > 2 and w.endswith("y") and w[-2] not in "aeiou":
        ed, ing = w[:-1] + "ied", w + "ing"
    elif w in IRREGULAR_PAST:
        ed, ing = IRREGULAR_PAST[w], (w + w[-1] if w in DOUBLING else w) + "ing"
    elif w in DOUBLING:
        ed, ing = w + w[-1] + "ed", w + w[-1] + "ing"
    else:
        ed, ing = w + "ed", w + "ing"
    return [_plural(w), ed, ing]


DOUBLING = {"ship", "stop", "plan", "run", "wrap", "drop", "scan", "debug"}
IRREGULAR_PAST = {
    "build": "built", "run": "ran", "buy": "bought", "sell": "sold", "pay": "paid",
    "spend": "spent", "read": "read", "write": "written", "send": "sent",
    "hold": "held", "choose": "chosen", "teach": "taught", "sign": "signed",
    "fit": "fitted", "lead": "led",
}


def _adverb(w: str) -> str:
    if w.endswith("y"):
        return w[:-1] + "ily"
    if w.endswith("le"):
        return w[:-1] + "y"
    if w.endswith("ic"):
        return w + "ally"
    return w + "ly"


def _dedup(words) -> list[str]:
    seen: set[str] = set()
    out = []
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


class Vocabulary:
    """Global and per-category Zipf-weighted word lists (fixed, seed-independent)."""

    def __init__(self, heavy: bool = False) -> None:
        self.heavy = heavy
        topical: dict[str, list[str]] = {
            cat: _dedup(_expand(blob.split())) for cat, blob in CATEGORIES.items()
        }
        rest = _expand(GENERAL_WORDS) + ADJECTIVES + [_adverb(w) for w in ADVERB_BASES]
        for v in VERBS:
            rest += [v] + _verb_forms(v)
        rest += _expand(COMPOUNDS) + CODES
        for words in topical.values():
            rest += words
        fixed = random.Random(20240611)  # vocabulary order never depends on --seed
        function_words = set(FUNCTION_WORDS)
        rest = _dedup(w for w in rest if w not in function_words)
        fixed.shuffle(rest)
        self.words: list[str] = FUNCTION_WORDS + rest  # Zipf rank order
        self.weights = (
            _zipf(len(self.words), s=1.2, q=0.0) if heavy else _zipf(len(self.words), s=1.05, q=2.7)
        )
        self.categories: list[str] = list(CATEGORIES)
        self.adjectives: list[str] = _dedup(ADJECTIVES)
        self.topical: dict[str, list[str]] = {}
        self._topical_weights: dict[str, list[float]] = {}
        for cat in self.categories:
            words = list(topical[cat])
            fixed.shuffle(words)
            self.topical[cat] = words
            self._topical_weights[cat] = _zipf(len(words), s=0.9, q=1.5)
        self._mixtures: dict[tuple[str, float], Sampler] = {}

    def mixture(self, cat: str, topical_share: float) -> "Sampler":
        """Sampler over the global words mixed with `cat`'s topical words."""
        key = (cat, topical_share)
        if key not in self._mixtures:
            g, t = self.weights, self._topical_weights[cat]
            gs, ts = (1.0 - topical_share) / sum(g), topical_share / sum(t)
            pop = self.words + self.topical[cat]
            self._mixtures[key] = Sampler(pop, [w * gs for w in g] + [w * ts for w in t])
        return self._mixtures[key]


class Sampler:
    """Weighted sampling: word = pop[bisect(cum, x)] for x = rng.random().

    A 2**16-slot lookup table answers most draws without the bisect: slot j is
    filled only if every x in [j/T, (j+1)/T) maps to the same word, so the
    result is exactly that of the bisect, just faster.
    """

    T = 1 << 16

    def __init__(self, pop: list[str], weights: list[float]) -> None:
        total = sum(weights)
        self.pop = pop
        self.cum = list(itertools.accumulate(w / total for w in weights))
        self.cum[-1] = 1.0  # guard against rounding: x < 1.0 always maps in range
        T = self.T
        self.table: list[str | None] = []
        for j in range(T):
            a = bisect.bisect(self.cum, j / T)
            b = bisect.bisect(self.cum, math.nextafter((j + 1) / T, 0.0))
            self.table.append(pop[a] if a == b else None)

    def sample(self, rnd, k: int) -> list[str]:
        tab, pop, cum, T, bis = self.table, self.pop, self.cum, self.T, bisect.bisect
        return [tab[int(x * T)] or pop[bis(cum, x)] for x in [rnd() for _ in range(k)]]


def _zipf(n: int, s: float, q: float) -> list[float]:
    return [1.0 / (r + q) ** s for r in range(1, n + 1)]


# ---------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------


class CorpusGenerator:
    """Deterministic item/query generator; importable by other scripts."""

    def __init__(self, seed: int | str, vocab: Vocabulary | None = None) -> None:
        self.vocab = vocab or Vocabulary()
        self.rng = random.Random(seed)

    def words(self, cat: str, k: int, topical_share: float = 0.45) -> list[str]:
        if self.vocab.heavy:
            topical_share = min(topical_share, 0.15)
        return self.vocab.mixture(cat, topical_share).sample(self.rng.random, k)

    def category(self) -> str:
        cats = self.vocab.categories
        return cats[int(self.rng.random() * len(cats))]

    def _int(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (cheaper than Random.randint)."""
        return lo + int(self.rng.random() * (hi - lo + 1))

    def text(self, cat: str, min_chars: int) -> str:
        rnd, randint = self.rng.random, self._int
        # Roughly 7 characters per word incl. the space; top up if short.
        words = self.words(cat, min_chars // 7 + 1)
        while sum(map(len, words)) + len(words) < min_chars:
            words += self.words(cat, 4)
        sentences = []
        i, n = 0, len(words)
        while i < n:
            k = randint(5, 12)
            if n - i - k < 5:
                k = n - i
            sent = words[i : i + k]
            i += k
            if k > 6 and rnd() < 0.3:
                sent[randint(2, k - 3)] += ","
            s = " ".join(sent)
            sentences.append(s[0].upper() + s[1:] + ".")
        return " ".join(sentences)

    def title(self, cat: str) -> str:
        adjs = self.vocab.adjectives
        words = [adjs[int(self.rng.random() * len(adjs))]]
        words += self.words(cat, self._int(2, 4), 0.7)
        return " ".join(w.capitalize() for w in words)

    def item(self, i: int) -> dict:
        rnd = self.rng.random
        cat = self.category()
        title = self.title(cat)
        text = self.text(cat, self._int(212, 322))
        price = round(math.exp(3.6 + 1.1 * self.rng.gauss()), 2)
        pool = self.vocab.topical[cat]
        tags: list[str] = []
        for _ in range(self._int(2, 4)):
            t = pool[int(rnd() * 30)]
            if t not in tags:
                tags.append(t)
        return {
            "id": f"item-{i:06d}",
            "title": title,
            "category": cat,
            "text": text,
            "price": price,
            "tags": tags,
        }

    def items(self, n: int) -> Iterator[dict]:
        for i in range(1, n + 1):
            yield self.item(i)

    def query(self) -> str:
        cat = self.category()
        if self.vocab.heavy:
            return " ".join(self.vocab.mixture(cat, 0.2).sample(self.rng.random, 2))
        return " ".join(self.words(cat, self._int(2, 6), 0.6))


def query_rng_seed(seed: int) -> str:
    """Queries use their own random stream so they do not depend on --n."""
    return f"deltacache-corpus:{seed}:queries"


BLOCK = 10_000  # items per independently seeded block


def block_rng_seed(seed: int, block: int) -> str:
    """Each block of BLOCK items has its own stream (str seeds are hashed with
    SHA-512 by random.Random, independent of PYTHONHASHSEED), so blocks can be
    generated in parallel and the output does not depend on --jobs."""
    return f"deltacache-corpus:{seed}:block:{block}"


_WORKER_VOCAB: Vocabulary | None = None


def generate_block(seed: int, block: int, n: int, heavy: bool = False) -> str:
    """JSONL text of items block*BLOCK+1 .. min(n, (block+1)*BLOCK)."""
    global _WORKER_VOCAB
    if _WORKER_VOCAB is None or _WORKER_VOCAB.heavy != heavy:
        _WORKER_VOCAB = Vocabulary(heavy)
    gen = CorpusGenerator(block_rng_seed(seed, block), _WORKER_VOCAB)
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    lo, hi = block * BLOCK + 1, min(n, (block + 1) * BLOCK)
    return "".join(dumps(gen.item(i)) + "\n" for i in range(lo, hi + 1))


def _generate_block_star(args: tuple[int, int, int, bool]) -> str:
    return generate_block(*args)


def iter_blocks(seed: int, n: int, jobs: int, heavy: bool = False) -> Iterator[str]:
    """Yield the output in order, block by block (bounded memory)."""
    tasks = [(seed, b, n, heavy) for b in range((n + BLOCK - 1) // BLOCK)]
    if jobs <= 1 or len(tasks) <= 1:
        yield from map(_generate_block_star, tasks)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        # imap keeps order; at most a few blocks (a few MB each) are in flight.
        yield from pool.imap(_generate_block_star, tasks, chunksize=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Generate a deterministic synthetic catalogue (JSONL) and optional queries.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--n", type=int, required=True, help="number of items")
    ap.add_argument("--seed", type=int, default=42, help="random seed")
    ap.add_argument("--out", required=True, help="output JSONL file ('-' for stdout)")
    ap.add_argument("--queries", type=int, default=0, help="number of queries to write")
    ap.add_argument("--queries-out", help="output file for queries (one per line)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes (output is identical for any value)",
    )
    ap.add_argument(
        "--vocab",
        choices=("catalogue", "heavy"),
        default="catalogue",
        help="word distribution: 'heavy' has far more frequent head words, function words "
        "kept, 2-word queries (build its bundle with --stop-words none)",
    )
    args = ap.parse_args(argv)
    heavy = args.vocab == "heavy"
    if args.n < 0 or args.queries < 0:
        ap.error("--n and --queries must be >= 0")
    if args.queries and not args.queries_out:
        ap.error("--queries requires --queries-out")

    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8", newline="\n")
    try:
        for chunk in iter_blocks(args.seed, args.n, args.jobs, heavy):
            out.write(chunk)
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()

    if args.queries:
        qgen = CorpusGenerator(query_rng_seed(args.seed), Vocabulary(heavy))
        with open(args.queries_out, "w", encoding="utf-8", newline="\n") as f:
            for _ in range(args.queries):
                f.write(qgen.query() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
