"""The local content-safety classifier: the moderator that needs no network.

A multi-label linear model — one sigmoid per label — over sparse features of a window of
text: words, word pairs and character n-grams inside words (as the task classifier,
``veil.routing.classifier``), each group L2-normalised, and cue lexicons (``CUES``: the
words of each kind of harm and attack) in place of its task cues. It is trained by ``veil safety train`` from ``data/safety/prompts`` (with
every prompt of ``data/routing/prompts`` as a safe example) and shipped as
``classifier.npz`` next to this module; ``train.py`` says how.

**Windows.** A prompt is read in windows of ``WINDOW_TOKENS`` tokens and a document in
windows of ``DOCUMENT_WINDOW_TOKENS``, each overlapping the next by half, and each label's
score is its worst window: an instruction hidden in the middle of a long document counts
as much as one in a short note. At most ``SCAN_CHARS``
characters of a text are read (the head, and ``SCAN_TAIL_CHARS`` of the tail), so the work
per text is bounded whatever its length.

**What is judged where.** Harm categories on the prompt and on each document (the worst
wins); ``jailbreak`` on the prompt only; ``indirect_injection`` on the documents only (0.0
when there are none). ``judge_text`` judges plain text — a model's answer — on the harm
categories alone.

**Which labels.** A head is trained only for a label with enough training examples
(``veil.safety.train.MIN_POSITIVES``); a label without one is absent from every ``Verdict``
(``LocalModerator.categories`` lists those present). Scores are probabilities, calibrated
on cross-validated scores of the training data; ``LocalModerator.thresholds`` are the
classifier's own decision thresholds, chosen on the same cross-validated scores — mostly
well below 0.5, so use them rather than 0.5. Its quality is measured by
``bench/safety.py`` (docs/benchmarks.md): it misses about four unsafe requests in ten
that are worded unlike its training data.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from itertools import pairwise
from pathlib import Path

import numpy as np

from veil.safety import ATTACKS, Screen, Verdict
from veil.safety.clusters import word_clusters

MODEL_PATH = Path(__file__).with_name("classifier.npz")
#: A window of text, in tokens (words and punctuation): the user's prompt is read in long
#: windows (a request needs its context), documents in short ones (an injected instruction
#: is a sentence or two in a page of text). Windows overlap by half.
WINDOW_TOKENS = 192
DOCUMENT_WINDOW_TOKENS = 48
#: At most this much of one text is read: its head, and ``SCAN_TAIL_CHARS`` of its tail.
SCAN_CHARS = 64_000
SCAN_TAIL_CHARS = 16_000
#: Character n-grams, inside words of at least ``GRAM_MIN_WORD`` letters, and their weight
#: against words and pairs.
GRAM_SIZES = (4,)
GRAM_MIN_WORD = 4
GRAM_WEIGHT = 0.5
#: The weight of the word-cluster groups (``veil.safety.clusters``) against words.
CLUSTER_WEIGHT = 0.5
#: The weight of a cue (below) present in a window.
CUE_WEIGHT = 0.5
#: Texts longer than this are judged in a worker thread, off the event loop.
THREAD_CHARS = 20_000

_TOKEN = re.compile(r"\w+|[^\w\s]")

# Cue lexicons: the words people use for each kind of harm, attack and mitigation. Features,
# not rules — the classifier learns how much each counts — they carry what a hundred examples
# of a category cannot: that "cyanide" is a poison like "arsenic", "unalive" is about suicide.
# Written from the categories' definitions, not from the held-out set. Each is matched on a
# window's tokens joined by single spaces ("won't" is "won ' t", "14-year-old" is
# "14 - year - old").
CUES: dict[str, str] = {
    # harm done to others
    "kill": r"kill\w*|murder\w*|assassinat\w*|slaughter\w*|strangl\w*|suffocat\w*|smother\w*|behead\w*|massacre\w*|homicid\w*|lethal|deadly|fatal\w*|shoot\w*|stab\w*|drown\w*|bleed (?:out|to death)|take (?:him|her|them) out|end (?:his|her|their) li(?:fe|ves)",
    "hurt": r"hurt\w*|harm\w*|injur\w*|beat\w* (?:up|him|her|them|the)|punch\w*|kick\w*|tortur\w*|maim\w*|crippl\w*|assault\w*|attack\w*|abus\w*|break (?:his|her|their) \w+|burn\w* (?:down|him|her|them|alive)|run (?:him|her|them|over)|pain\w*|suffer\w*|violen\w*|brutal\w*|fight\w*",
    "weapon": r"guns?|rifles?|pistols?|firearms?|handguns?|shotguns?|ar - 15|ammo|ammunition|knife|knives|machetes?|blades?|bombs?|explosives?|grenades?|detonat\w*|pipe bombs?|ied|molotov\w*|napalm|silencers?|suppressors?|brass knuckles|weapons?|nerve agent|sarin|anthrax|bioweapon\w*|chemical weapon\w*|thermite",
    "poison": r"poison\w*|cyanide|arsenic|ricin|antifreeze|toxin\w*|toxic|overdos\w*|lethal dose|spike (?:her|his|their|someone ' s|a) drinks?|roofie\w*|sedat\w*|drug (?:her|him|them|someone)",
    "gore": r"gor[ey]|blood\w*|guts|entrails|intestines|dismember\w*|mutilat\w*|decapitat\w*|torn apart|rip\w* (?:apart|open|off)|flay\w*|gruesome|grisly|graphic\w*|viscera|severed|organs spill\w*|skin (?:tearing|peel\w*)|splatter\w*",
    # self-harm
    "suicide": r"suicid\w*|kill (?:myself|themselves|yourself|herself|himself|ourselves)|end (?:my|it|their|your) (?:life|lives|all)|end it all|unaliv\w*|take my (?:own )?life|not (?:wake|waking) up|don ' t want to (?:live|be alive|exist|wake up)|better off dead|want to die|hang (?:myself|themselves)|noose|jump (?:off|in front)|slit\w*|painless\w*|goodbye note|final note",
    "selfharm": r"self - harm\w*|self harm\w*|selfharm|cut\w* (?:myself|themselves|yourself|herself|himself|my (?:arms?|wrists?|thighs?|legs?))|wrists?|razor\w*|burn (?:myself|my skin)|starv\w*|purg\w*|anorexi\w*|bulimi\w*|pro - ana|proana|thinspo\w*|laxatives?|fasting|calories|skip\w* meals?|hide (?:it|the (?:cuts|scars|marks))|scars?|relapse\w*|pills?|sleeping pills|tylenol|acetaminophen|paracetamol",
    "despair": r"hopeless\w*|worthless|no point|nothing to live for|can ' t go on|burden|give up on (?:life|everything)|empty inside|nobody would (?:care|miss me)|no one would (?:care|miss me)|tired of (?:living|life|everything)|alone|depress\w*",
    "self": r"myself|themselves|yourself|herself|himself|my own",
    # crime
    "drugs": r"meth\w*|amphetamin\w*|cocaine|crack|heroin|fentanyl|opioids?|oxy\w*|lsd|mdma|ecstasy|ketamine|ghb|psilocybin|shrooms|weed|cannabis|narcotics?|drugs?|cook\w*|synthes\w*|precursors?|reagents?|pseudoephedrine|grow (?:op|house)|dealer\w*|deal\w*",
    "cyber": r"hack\w*|malware|ransomware|keylog\w*|phish\w*|ddos|botnet|trojan|spyware|stalkerware|exploit\w*|backdoor\w*|rootkit|brute - forc\w*|brute forc\w*|crack\w* (?:passwords?|wifi|the)|password\w*|wi - fi|wifi|sql injection|zero - day|credentials?|bypass\w*|jailbreak\w*|sim swap\w*|spoof\w*|payload\w*|reverse shell|encrypt\w* (?:every|all)",
    "fraud": r"fake (?:ids?|passports?|documents?|reviews?|receipts?|invoices?|doctor ' s note|prescriptions?)|counterfeit\w*|forg\w*|scam\w*|launder\w*|fraud\w*|embezzl\w*|identity theft|stolen|skim\w*|carding|chargeback|ponzi|pyramid scheme|insurance claim|tax evasion|evade taxes|shell compan\w*|bribe\w*|blackmail\w*|extort\w*|impersonat\w*",
    "theft": r"steal\w*|stole|shoplift\w*|rob\w*|burglar\w*|break into|breaking into|pickpocket\w*|carjack\w*|hotwir\w*|lock ?pick\w*|pick (?:a|the) lock|loot\w*|smuggl\w*|traffick\w*|poach\w*",
    "evade": r"without (?:getting caught|being caught|anyone (?:knowing|noticing|finding out)|a trace|leaving (?:a trace|evidence|marks))|get away with|(?:won ' t|wouldn ' t|doesn ' t|don ' t) (?:show up|be traced|get caught|notice)|undetect\w*|untrace\w*|avoid (?:detection|getting caught|the police|cops)|cover (?:it )?up|cover my tracks|get rid of (?:the )?(?:body|evidence|blood)|dispose of|no one (?:will|would) (?:know|find out|notice)|nobody (?:will|would) (?:know|find out|notice)|cops|police|autopsy|forensic\w*|fingerprints?|alibi|evidence|security (?:cameras?|tags?|guards?)|anonymous\w*|burner|hidden camera",
    # persons and groups
    "target": r"my (?:ex|wife|husband|girlfriend|boyfriend|partner|neighbou?r|coworker|co - worker|colleague|boss|manager|roommate|classmate|teacher|sister|brother|mom|dad|mother|father|stepdad|stepmom|son|daughter|friend|landlord|tenant)\w*|(?:the|this|that) (?:guy|girl|woman|man|kid)|someone ' s|someone|somebody|a person|people|him|her|them|he|she|they",
    "group": r"muslims?|islam\w*|jews?|jewish|christians?|hindus?|sikhs?|buddhists?|atheists?|black (?:people|men|women|folks)|blacks|whites|white people|asians?|latinos?|latinas?|hispanics?|mexicans?|arabs?|africans?|chinese|indians?|immigrants?|migrants?|refugees?|foreigners?|gays?|lesbians?|homosexuals?|bisexual\w*|trans(?:gender)?(?: people| women| men)?|lgbt\w*|queer|women|girls|men|disabled|autistic|deaf|blind|elderly|old people|romani?|gypsies|eastern europeans?|minorit\w*|races?|racial\w*|ethnic\w*|religio\w*|nationalit\w*",
    "dehumanize": r"vermin|plague|parasit\w*|subhuman\w*|animals|savages?|inferior|filth\w*|disease\w*|invad\w*|infest\w*|cockroach\w*|rats|apes|monkeys|breed\w* like|exterminat\w*|genocid\w*|ethnic cleansing|wipe (?:them|out)|purge|deport\w*|go back to|don ' t belong|should (?:not|n ' t) (?:be allowed|have rights|vote|work)|lose the right|ban(?:ned)? from|segregat\w*|supremac\w*|master race|replacement|degenerat\w*|hate (?:them|all)|are (?:all|always|naturally) \w+|stereotyp\w*|generaliz\w*|racis\w*|sexis\w*|bigot\w*|slurs?|hate speech|propaganda|manifesto",
    "insult": r"stupid|idiot\w*|moron\w*|dumb|ugly|fat|loser\w*|pathetic|worthless|disgusting|freak\w*|humiliat\w*|mock\w*|ridicul\w*|bull(?:y|ied|ying)|harass\w*|embarrass\w*|belittl\w*|degrad\w*|shame\w*|insult\w*|make fun of|tease|roast\w*|trash talk|destroy (?:him|her|them)|feel (?:bad|worthless|small|ugly|stupid)|cry|quit|guilt - trip\w*|gaslight\w*|manipulat\w*|rumou?rs?|lies about|spread\w*|expose|leak\w*|nudes?",
    "stalk": r"dox\w*|home address|where (?:he|she|they) lives?|real name|phone number|track (?:her|his|their|my)|location|follow (?:her|him|them)|stalk\w*|spy on|monitor (?:her|his|their)|read (?:her|his|their) (?:texts|messages|email)|gps tracker|airtag|find (?:out )?where|mass - report|pile on|spam\w*|flood (?:her|his|their)|fake (?:account|profile)s?|catfish\w*|impersonat\w*|screenshot",
    "threat": r"threat\w*|threaten\w*|intimidat\w*|scare (?:him|her|them)|terrify\w*|watch (?:your|his|her) back|or else|you ' ll regret|you will regret|i ' ll (?:kill|hurt|find|get|make|stab|shoot|end)|i will (?:kill|hurt|find|get|make|stab|shoot|end)|gonna (?:kill|hurt|get)|make (?:him|her|them) pay|revenge|teach (?:him|her|them) a lesson|pay for (?:this|what)",
    # sexual
    "sexual": r"sex\w*|erotic\w*|erotica|nsfw|porn\w*|nude\w*|naked|orgasm\w*|seduc\w*|horny|fetish\w*|kink\w*|smut\w*|lewd|explicit\w*|steamy|spicy|x - rated|xxx|aroused|arousal|genitals?|breasts?|penis|vagina|intercourse|foreplay|moan\w*|strip\w*|onlyfans|hook ?up|one night stand|make love|in bed|bedroom|undress\w*|lingerie|bdsm|dominat\w*|submissive",
    "minor": r"child\w*|kids?|minors?|underage\w*|teen\w*|adolescen\w*|preteens?|tweens?|schoolgirls?|schoolboys?|high school\w*|middle school\w*|freshm[ae]n|students?|little (?:girl|boy)s?|young (?:girl|boy)s?|daughter|son|niece|nephew|babysit\w*|(?:1[0-7]|[1-9]) - (?:year|yr) - old|(?:1[0-7]|[1-9]) (?:years?|yrs?) old|age (?:1[0-7]|[1-9])\b|grade(?:rs)?|loli\w*",
    # requests and framings
    "howto": r"how (?:do|can|could|would|should) (?:i|we|you|one|someone)|how to|best way|easiest way|quickest way|fastest way|cheapest way|step - by - step|step by step|instructions?|guide|tutorial|recipe|walk me through|teach me|tips|methods?|techniques?|what (?:do|would) i need|list of|exact\w*|in detail|detailed|specific\w*|amounts?|doses?|how much|how many",
    "safety": r"safe\w*|prevent\w*|protect\w*|recogni[sz]\w*|warning signs|signs of|report\w*|support\w*|help (?:a|my) (?:friend|child|kid|teen|son|daughter|partner)|hotline|helpline|crisis line|988|therap\w*|counsel\w*|doctor|nurse|medical|treat\w*|recover\w*|cop(?:e|ing)|awareness|educat\w*|lesson|class|teach (?:my|our|the) (?:kids?|students?|class)|history|historical\w*|statistic\w*|research\w*|stud(?:y|ies)|policy|polic(?:y|ies)|law\w*|legal\w*|illegal\?|ethic\w*|debate|essay|analy\w*|explain why|why do people|victims?|survivors?|apolog\w*|de - escalat\w*|self - defen[cs]e|consent|age - appropriate|suitable for|not explicit|fade to black|without (?:gore|violence|graphic)",
    "fiction": r"story|stories|novel\w*|fiction\w*|scene|character\w*|screenplay|script|roleplay\w*|role - play\w*|poem|lyrics|plot|villain|chapter|game|dnd|d & d|campaign|fantasy|movie|film|tv show|anime|comic",
    # attacks on the model
    "override": r"ignore\w*|disregard\w*|forget\w*|bypass\w*|override\w*|overrid\w*|previous (?:instructions?|prompts?|rules|messages?)|prior (?:instructions?|prompts?|rules)|above (?:instructions?|prompt)|all (?:your|the|previous) (?:instructions|rules|guidelines|restrictions)|system prompt|hidden instructions?|initial (?:instructions|prompt)|new instructions?|from now on|developer mode|dan|jailbr\w*|do anything now|no (?:restrictions|rules|limits|filters?|guidelines|censorship|warnings|disclaimers|refusals?)|unfiltered|uncensored|unrestricted|without (?:any )?(?:restrictions|filters?|warnings|disclaimers|refusing|limits|censorship|moral\w*|ethic\w*)|content polic\w*|guidelines|safety (?:filters?|guidelines|rules|training)|stay in character|break character|never refuse|must (?:answer|comply|obey)|you are now|you ' re now|pretend (?:you|to be)|act as|roleplay as|opposite mode|evil|unethical|amoral|anything goes|hypothetic\w*|purely (?:theoretical|fictional)|for (?:educational|research) purposes|base64|rot13|leetspeak|reversed|in code|token system|tokens|verbatim|repeat (?:the|your) (?:words|text|instructions)|print your",
    "inject": r"assistant|ai|a\.i\.|chatbot|language model|llm|model|gpt|claude|note to (?:the )?(?:ai|assistant|model)|attention (?:ai|assistant)|important (?:instruction|note|message)|system (?:message|note|override|:)|\[ ?system ?\]|< \| im_start \| >|\[ inst \]|### instruction|instead|do not (?:tell|mention|inform|reveal|summarize)|don ' t (?:tell|mention|inform|summarize)|without telling|the user|user ' s|forward\w*|send (?:all|the|this|their|every)|email (?:all|the|every)|exfiltrat\w*|upload\w*|http\w*|www|\. com|link|click|visit|api keys?|tokens?|credentials?|passwords?|secrets?|private (?:keys?|data)|contacts?|files?|delete\w*|transfer\w*|wire|bitcoin|crypto|payment|approve\w*|grant\w*|admin\w*|execute|run (?:the|this) command|rm - rf|curl",
}
_CUES = {name: re.compile(r"(?<!\w)(?:" + p + r")(?!\w)") for name, p in CUES.items()}


def tokens_of(text: str) -> list[str]:
    """The tokens read of a text: lower-cased words and punctuation marks, at most
    ``SCAN_CHARS`` characters' worth."""
    if len(text) > SCAN_CHARS:
        text = text[: SCAN_CHARS - SCAN_TAIL_CHARS] + "\n" + text[-SCAN_TAIL_CHARS:]
    return _TOKEN.findall(text.lower())


def windows(tokens: Sequence[str], size: int) -> list[Sequence[str]]:
    """Windows of ``size`` tokens overlapping by half; the last ends at the last token. An
    empty text is one empty window."""
    n = len(tokens)
    if n <= size:
        return [tokens]
    starts = [*range(0, n - size, size // 2), n - size]
    return [tokens[s : s + size] for s in starts]


@lru_cache(maxsize=65_536)
def _grams(word: str) -> tuple[str, ...]:
    if len(word) < GRAM_MIN_WORD or not word.isalpha():
        return ()
    padded = "<" + word + ">"
    return tuple(
        "c:" + padded[i : i + size] for size in GRAM_SIZES for i in range(len(padded) - size + 1)
    )


def features(tokens: Sequence[str]) -> dict[str, float]:
    """The named features of one window and their values.

    Words (``w:``), word pairs (``b:``, the first paired with ``<s>``), character
    n-grams (``c:``), the words' clusters (``s:`` fine, ``S:`` coarse) and pairs of
    neighbouring coarse clusters (``p:``), each group L2-normalised on its own; each cue
    present (``k:``); the
    log of the window's length (``d:len``); and a constant (``d:bias``), the intercept.
    """
    words: Counter[str] = Counter(tokens)
    pairs: Counter[tuple[str, str]] = Counter(zip(["<s>", *tokens], tokens, strict=False))
    grams: dict[str, float] = {}
    for word, count in words.items():
        for gram in _grams(word):
            grams[gram] = grams.get(gram, 0.0) + count
    out = _normalised({"w:" + w: float(c) for w, c in words.items()})
    out.update(_normalised({"b:" + a + " " + b: float(c) for (a, b), c in pairs.items()}))
    out.update(_normalised(grams, GRAM_WEIGHT))
    # Each word's clusters, and pairs of neighbouring coarse clusters: words never seen in
    # training count as the known words they cluster with (veil.safety.clusters).
    table = word_clusters()
    found = [table.get(t) for t in tokens]
    members: Counter[str] = Counter()
    for hit in found:
        if hit is not None:
            members["s:" + str(hit[0])] += 1
            members["S:" + str(hit[1])] += 1
    out.update(_normalised(dict(members), CLUSTER_WEIGHT))
    cluster_pairs = Counter(
        f"p:{a[1]} {b[1]}" for a, b in pairwise(found) if a is not None and b is not None
    )
    out.update(_normalised(dict(cluster_pairs), CLUSTER_WEIGHT))
    joined = " ".join(tokens)
    for name, pattern in _CUES.items():
        if pattern.search(joined):
            out["k:" + name] = CUE_WEIGHT
    out["d:len"] = math.log1p(len(tokens)) / math.log1p(WINDOW_TOKENS)
    out["d:bias"] = 1.0
    return out


def _normalised(counts: dict[str, float], scale: float = 1.0) -> dict[str, float]:
    norm = math.sqrt(sum(v * v for v in counts.values())) or 1.0
    return {k: scale * v / norm for k, v in counts.items()}


def text_features(text: str, document: bool = False) -> list[dict[str, float]]:
    """The features of each window of a prompt, or of a document."""
    size = DOCUMENT_WINDOW_TOKENS if document else WINDOW_TOKENS
    return [features(w) for w in windows(tokens_of(text), size)]


@dataclass(frozen=True, slots=True)
class SafetyModel:
    """The shipped weights: a column per label with a head."""

    labels: tuple[str, ...]
    index: dict[str, int]
    #: (features × labels): probability = sigmoid(window · weights); the intercept is the
    #: ``d:bias`` row.
    weights: np.ndarray
    thresholds: dict[str, float]
    data_digest: str
    #: What cross-validation on the training data predicted (recall, FPR).
    cv: dict[str, float] = field(default_factory=dict)

    def logits(self, text: str, document: bool = False) -> np.ndarray:
        """The worst (largest) logit per label over the text's windows."""
        index, weights = self.index, self.weights
        worst = np.full(len(self.labels), -np.inf)
        for window in text_features(text, document):
            rows: list[int] = []
            values: list[float] = []
            for name, value in window.items():
                i = index.get(name)
                if i is not None:
                    rows.append(i)
                    values.append(value)
            np.maximum(worst, np.asarray(values) @ weights[rows], out=worst)
        return worst


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))


def load_model(path: Path = MODEL_PATH) -> SafetyModel:
    try:
        with np.load(path, allow_pickle=False) as saved:
            labels = tuple(str(v) for v in saved["labels"])
            vocabulary = [str(v) for v in saved["vocabulary"]]
            weights = saved["weights"].astype(np.float64)
            thresholds = saved["thresholds"].astype(np.float64)
            digest = str(saved["data_digest"])
            cv = {str(k): float(v) for k, v in json.loads(str(saved["cv"])).items()}
    except (OSError, KeyError, ValueError) as exc:
        raise RuntimeError(
            f"cannot load the safety classifier from {path}: {exc}; "
            "rebuild it with 'veil safety train'"
        ) from exc
    return SafetyModel(
        labels,
        {name: i for i, name in enumerate(vocabulary)},
        weights,
        {label: float(t) for label, t in zip(labels, thresholds, strict=True)},
        digest,
        cv,
    )


@cache
def _shipped(path: Path) -> SafetyModel:
    return load_model(path)


class LocalModerator:
    """The ``Moderator`` that runs in-process. Weights are loaded on first use and shared by
    every instance; ``judge`` is pure and thread-safe."""

    name = "local"

    def __init__(self, path: Path = MODEL_PATH, model: SafetyModel | None = None) -> None:
        self.model = model or _shipped(path)
        #: The labels this classifier judges (those with a trained head).
        self.categories: tuple[str, ...] = self.model.labels
        #: The classifier's own decision threshold per label, on its probability.
        self.thresholds: dict[str, float] = dict(self.model.thresholds)
        self._harm = [i for i, label in enumerate(self.categories) if label not in ATTACKS]
        self._prompt = [i for i, label in enumerate(self.categories) if label != ATTACKS[1]]
        self._document = [i for i, label in enumerate(self.categories) if label != ATTACKS[0]]

    def judge(self, screen: Screen) -> Verdict:
        """Harm on the prompt and every document (the worst wins), ``jailbreak`` on the
        prompt, ``indirect_injection`` on the documents."""
        model = self.model
        worst = np.full(len(self.categories), -np.inf)
        worst[self._prompt] = model.logits(screen.prompt)[self._prompt]
        for document in screen.documents:
            logits = model.logits(document, document=True)
            np.maximum(worst, _only(logits, self._document), out=worst)
        scores = sigmoid(worst)
        if not screen.documents and ATTACKS[1] in self.categories:
            scores[self.categories.index(ATTACKS[1])] = 0.0
        return self._verdict(scores, range(len(self.categories)))

    def judge_text(self, text: str) -> Verdict:
        """Harm categories only, on plain text (an answer): no attack labels."""
        model = self.model
        return self._verdict(sigmoid(model.logits(text)), self._harm)

    def flagged(self, verdict: Verdict) -> list[str]:
        """The labels whose score reaches this classifier's threshold."""
        return [c for c, s in verdict.scores.items() if s >= self.thresholds.get(c, math.inf)]

    async def moderate(self, screen: Screen) -> Verdict:
        size = len(screen.prompt) + sum(len(d) for d in screen.documents)
        if size > THREAD_CHARS:
            return await asyncio.to_thread(self.judge, screen)
        return self.judge(screen)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _verdict(self, scores: np.ndarray, which: Iterable[int]) -> Verdict:
        return Verdict({self.categories[i]: float(scores[i]) for i in which}, [self.name])


def _only(logits: np.ndarray, columns: list[int]) -> np.ndarray:
    out = np.full_like(logits, -np.inf)
    out[columns] = logits[columns]
    return out


@cache
def default_moderator() -> LocalModerator:
    return LocalModerator()
