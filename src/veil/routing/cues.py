"""Cue phrases: the words people use to ask for each kind of task.

Features for the task classifier, not rules: the classifier learns how much each cue counts.
They generalise what a few hundred examples per category can teach — "tl;dr", "boil this
down" and "the gist" all ask for a summary.
"""

from __future__ import annotations

import re

LANGS = "english|spanish|french|german|japanese|chinese|mandarin|cantonese|italian|portuguese|korean|arabic|hindi|dutch|russian|swahili|polish|ukrainian|vietnamese|turkish|welsh|latin|greek|hebrew|swedish|norwegian|danish|finnish|thai|indonesian|tagalog|urdu|bengali|persian|farsi|czech|romanian|hungarian"
CODE_WORDS = (
    r"python|javascript|typescript|node(?:\.?js)?|deno|golang|rust|java|kotlin|swift|c#|"
    r"csharp|c\+\+|cpp|ruby|php|perl|lua|zig|dart|scala|haskell|elixir|erlang|clojure|julia|"
    r"matlab|fortran|cobol|bash|shell|zsh|powershell|sql|postgres\w*|mysql|sqlite|mongo\w*|"
    r"redis|graphql|html|css|sass|react|vue|angular|svelte|next\.js|django|flask|fastapi|"
    r"rails|spring|express|laravel|\.net|linq|pandas|numpy|pytorch|tensorflow|docker\w*|"
    r"kubernetes|k8s|helm|terraform|ansible|yaml|nginx|git|github actions|makefile|cmake|"
    r"gradle|maven|npm|pip|cargo|webpack|vite|regexp?|api|endpoint|handler|lexer|parser|"
    r"compiler|function|method|class|struct|interface|loop|array|dict|hashmap|recursion|"
    r"recursive|unit tests?|pytest|jest|junit|debug\w*|stack ?trace|traceback|exception|"
    r"segfault|null pointer|undefined|compil\w*|deploy\w*|script|snippet|code|program|"
    r"hello world|schema|migrations?|query|queries|orm|cli|async|await|thread\w*|"
    r"bug|crash\w*|error:|refactor\w*|implement\w*|repo|pull request|lint\w*|type hints?"
)
MATH_WORDS = (
    r"how many|how much|volume|area|perimeter|circumference|radius|diameter|triangle|"
    r"circle|square root|cube|primes?|integers?|digits?|divisible|factori\w*|multiples?|"
    r"fractions?|decimal|percent\w*|ratio|probabilit\w*|odds|expected value|mean|median|"
    r"variance|standard deviation|regression|derivative|integral|limit|matri\w*|vectors?|"
    r"eigen\w*|equations?|inequalit\w*|solve|simplify|prove|proof|theorem|lemma|"
    r"combinatori\w*|permutations?|combinations?|modulo|gcd|lcm|sum of|product of|"
    r"sequence|series|calculat\w*|compute|arithmetic|algebra|geometry|calculus|"
    r"statistic\w*|interest rate|compound|km/h|mph|per hour|average|total cost"
)

CUES: dict[str, str] = {
    "summarize": r"\b(summar\w*|sum(?:s|med)? (?:it |this |that )?up|tl;? ?dr|gist|recap\w*|condens\w*|boil\w* (?:it |this |that )?down|short version|takeaways?|main (?:points|ideas|arguments?)|in a nutshell|overview|abstract|digest|distill\w*|catch me up|synopsis|minutes|bullet(?: point)?s?|highlights)\b",
    "rewrite": r"\b(rewrit\w*|re-?word\w*|rephras\w*|paraphras\w*|grammar|typos?|spelling|proofread\w*|polish\w*|tighten\w*|make (?:it|this|that|my \w+) (?:sound|more|less)|sound (?:more|less)?\s?\w+|more (?:formal|polite|professional|casual|concise|friendly)|tone|simplif\w*|shorten\w*|convert (?:it |this )?(?:to|into)|edit\w*|redraft\w*|restructur\w*|reformat\w*|clean (?:it |this )?up|improve (?:the|this|my) (?:wording|writing|flow))\b",
    "extract": r"\b(extract\w*|pull (?:out|the)|pick out|list (?:all|every|the|each)|find (?:all|every|the)|as json|into json|json|fields?|parse\w*|tabulate|action items?|mentioned|entities|what (?:are|is|was|were) the|which \w+ (?:are|is|were) (?:mentioned|listed|cited)|get (?:me )?(?:the|all))\b",
    "classify": r"\b(classif\w*|categori[sz]\w*|label\w*|tag\w*|sentiment|positive|negative|neutral|spam|phishing|which (?:category|language|intent|class|bucket)|intent|priority|urgency|toxic\w*|offensive|clickbait|sort (?:these|this|each)|triage|route (?:this|each|these)|is (?:this|it) (?:a |an )?\w+ or (?:a |an )?\w+|\w+ or \w+\?)",
    "translate": r"\b(translat\w*|how (?:do|would|can) (?:you|i|we) say|in (?:"
    + LANGS
    + r")|into (?:"
    + LANGS
    + r")|to (?:"
    + LANGS
    + r")|what does .{1,60} mean|english version)\b",
    "code": r"(\b(?:" + CODE_WORDS + r")\b|=>|\{|\};?|\bdef \w+\(|\bimport\b|```)",
    "math_reasoning": r"(\d\s*[-+*/×÷^]\s*\d|%\s*of|\b\d+!|\b(?:"
    + MATH_WORDS
    + r")\b|\bx\b|√|∑|∫|π)",
    "creative_writing": r"\b(poem|haiku|sonnet|limerick|story|stories|lyrics|song|jokes?|puns?|slogan|tagline|toast|speech|fiction|fairy ?tale|bedtime|screenplay|scene|verse|rhym\w*|villanelle|ballad|monologue|dialogue|plot|character|write (?:me )?a)\b",
    "analysis": r"\b(compar\w*|pros and cons|trade-?offs?|evaluat\w*|assess\w*|analy[sz]\w*|should (?:we|i)|which (?:is better|should|one)|recommend\w*|risks?|strengths?|weakness\w*|swot|root cause|interpret\w*|versus|vs\.?|better|worth it|decision|justify)\b",
    "knowledge_qa": r"\b(what is|what are|what's|who (?:was|is|were|invented|wrote|discovered)|when (?:did|was|were)|why (?:is|are|do|does|did)|how (?:does|do|did) .{1,40} work|explain\w*|define|definition|history|capital of|meaning of|difference between)\b",
    "chat": r"\b(hi|hey|hello|yo|thanks|thank you|how are you|i feel|i'm feeling|i am feeling|nervous|anxious|lonely|sad|bored|advice|should i|my (?:boyfriend|girlfriend|wife|husband|partner|friend|mom|mum|dad|boss|kid|son|daughter)|good (?:morning|night)|lol|:\))\b",
}
#: Compiled once; case-insensitive.
CUE_PATTERNS = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in CUES.items()}
