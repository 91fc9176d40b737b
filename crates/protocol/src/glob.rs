//! Channel authorisation patterns (wire spec §9.2–9.4).
//!
//! Grammar: `*` = any run of non-`/` characters, `**` (or longer runs of `*`) = any run of characters,
//! `\*` = literal `*`, `\\` = literal `\`, any other `\` is itself a literal backslash, everything else
//! is literal and case-sensitive. Matching is anchored.
//!
//! Patterns are tiny NFAs (one state per token position), so matching is a state-set simulation
//! (no backtracking) and inclusion is a product/subset construction over an abstracted alphabet.

use std::collections::{HashSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Token {
    Literal(char),
    /// Any run of characters except `/`.
    Star,
    /// Any run of characters.
    DoubleStar,
}

impl Token {
    fn is_wild(self) -> bool {
        !matches!(self, Token::Literal(_))
    }
}

/// A compiled channel pattern.
///
/// Consecutive `*` are merged while parsing, so two wildcard tokens are never adjacent; the NFA code
/// relies on that only for speed, not correctness.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
    /// Literal runs between wildcards (first and last may be empty), for the fast matcher and
    /// its prefilter.
    runs: Vec<String>,
    has_star: bool,
    has_double_star: bool,
    nfa: BitNfa,
}

/// Bit masks over token positions for the bit-parallel matcher: position `i` (bit `i`) is
/// "the first `i` tokens are consumed".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BitNfa {
    words: usize,
    /// Distinct literal characters, sorted; `literal` holds one mask of `words` per entry.
    chars: Vec<char>,
    literal: Vec<u64>,
    double_star: Vec<u64>,
    /// Positions holding `*` or `**`.
    wild: Vec<u64>,
}

impl BitNfa {
    fn new(tokens: &[Token]) -> BitNfa {
        let words = (tokens.len() + 1).div_ceil(64);
        let mut chars: Vec<char> = tokens
            .iter()
            .filter_map(|t| match t {
                Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect();
        chars.sort_unstable();
        chars.dedup();
        let mut nfa = BitNfa {
            words,
            literal: vec![0; chars.len() * words],
            chars,
            double_star: vec![0; words],
            wild: vec![0; words],
        };
        for (i, token) in tokens.iter().enumerate() {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            match token {
                Token::Literal(c) => {
                    if let Ok(k) = nfa.chars.binary_search(c) {
                        nfa.literal[k * words + word] |= bit;
                    }
                }
                Token::Star => nfa.wild[word] |= bit,
                Token::DoubleStar => {
                    nfa.wild[word] |= bit;
                    nfa.double_star[word] |= bit;
                }
            }
        }
        nfa
    }

    /// Lets active wildcards match the empty string (they are never adjacent, so one step
    /// suffices). Returns false when no position is active.
    fn close(&self, state: &mut [u64]) -> bool {
        let mut carry = 0;
        let mut any = 0;
        for (word, wild) in state.iter_mut().zip(&self.wild) {
            let open = *word & wild;
            *word |= (open << 1) | carry;
            carry = open >> 63;
            any |= *word;
        }
        any != 0
    }
}

/// Most wildcard tokens a subscribe pattern may have (see [`Pattern::wildcard_count`]).
///
/// Real subscriptions use one to three (`room/*`, `fleet/*/telemetry`, `user/42/**`); eight
/// leaves room for unusual but honest shapes. The cost of deciding whether a pattern is within
/// a key's scope grows with the number of wildcard positions the search must track at once, so
/// a crafted pattern with dozens of `*` is refused before that search starts.
pub const MAX_WILDCARDS: usize = 8;

/// One `/`-separated piece of a pattern, as a subscription index files it.
#[derive(Debug, Clone)]
pub enum Segment {
    /// No wildcard: the unescaped segment text.
    Literal(String),
    /// Exactly `*`: any one segment.
    Any,
    /// A one-segment pattern with `*` (never `**`, never `/`), e.g. `room-*`.
    Glob(Pattern),
}

/// A pattern split for indexing: it matches a name iff the name's first `segments.len()`
/// `/`-separated segments match `segments` one by one and then either the name ends there
/// (`rest` is `None`) or the remainder after the next `/` matches `rest` (the pattern from the
/// first segment that contains `**`).
#[derive(Debug, Clone)]
pub struct Layout {
    pub segments: Vec<Segment>,
    pub rest: Option<Pattern>,
}

impl Pattern {
    /// Compiles `src`. Never fails: every string is a valid pattern under §9.2.
    pub fn parse(src: &str) -> Pattern {
        Self::from_parts(src.to_owned(), tokenize(src))
    }

    fn from_parts(source: String, tokens: Vec<Token>) -> Pattern {
        let mut runs = vec![String::new()];
        for token in &tokens {
            match token {
                Token::Literal(c) => runs.last_mut().into_iter().for_each(|r| r.push(*c)),
                Token::Star | Token::DoubleStar => runs.push(String::new()),
            }
        }
        Pattern {
            source,
            has_star: tokens.contains(&Token::Star),
            has_double_star: tokens.contains(&Token::DoubleStar),
            nfa: BitNfa::new(&tokens),
            tokens,
            runs,
        }
    }

    /// A pattern made of `tokens`, with its source spelled so that it parses back to them.
    fn from_tokens(tokens: &[Token]) -> Pattern {
        let mut source = String::with_capacity(tokens.len());
        for token in tokens {
            match token {
                Token::Literal(c @ ('*' | '\\')) => {
                    source.push('\\');
                    source.push(*c);
                }
                Token::Literal(c) => source.push(*c),
                Token::Star => source.push('*'),
                Token::DoubleStar => source.push_str("**"),
            }
        }
        Self::from_parts(source, tokens.to_vec())
    }

    /// Number of wildcard tokens (`*` and `**` runs), the measure [`MAX_WILDCARDS`] bounds.
    pub fn wildcard_count(&self) -> usize {
        self.runs.len() - 1
    }

    /// True when the pattern has more wildcard tokens than a subscribe may use.
    pub fn is_too_complex(&self) -> bool {
        self.wildcard_count() > MAX_WILDCARDS
    }

    /// The pattern split on `/` for a subscription index (see [`Layout`]).
    pub fn layout(&self) -> Layout {
        let mut segments = Vec::new();
        let mut start = 0;
        loop {
            let end = self.tokens[start..]
                .iter()
                .position(|t| *t == Token::Literal('/'))
                .map(|i| start + i);
            let piece = &self.tokens[start..end.unwrap_or(self.tokens.len())];
            if piece.contains(&Token::DoubleStar) {
                let rest = Some(Pattern::from_tokens(&self.tokens[start..]));
                return Layout { segments, rest };
            }
            segments.push(if piece == [Token::Star] {
                Segment::Any
            } else if piece.iter().all(|t| !t.is_wild()) {
                Segment::Literal(
                    piece
                        .iter()
                        .filter_map(|t| match t {
                            Token::Literal(c) => Some(*c),
                            _ => None,
                        })
                        .collect(),
                )
            } else {
                Segment::Glob(Pattern::from_tokens(piece))
            });
            match end {
                Some(slash) => start = slash + 1,
                None => {
                    return Layout {
                        segments,
                        rest: None,
                    }
                }
            }
        }
    }

    /// The original source text, escapes included.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern names exactly one channel (no unescaped `*`).
    pub fn is_literal(&self) -> bool {
        !self.tokens.iter().any(|t| t.is_wild())
    }

    /// The unescaped channel name, if the pattern is literal.
    pub fn literal(&self) -> Option<String> {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Literal(c) => Some(*c),
                Token::Star | Token::DoubleStar => None,
            })
            .collect()
    }

    /// Anchored match of a concrete channel name.
    ///
    /// When every wildcard of the pattern may cross every character of the name (only `**`, or
    /// only `*` and no `/` in the name), a greedy leftmost search of the literal runs decides it
    /// in about one pass. Otherwise the literal runs are a cheap prefilter and the token NFA
    /// decides: O(tokens × chars), immune to the exponential blow-up a backtracking matcher has
    /// on `*a*a*a*…b`.
    pub fn matches(&self, channel: &str) -> bool {
        if self.runs.len() == 1 {
            return self.runs[0] == channel;
        }
        if !self.runs_fit(channel) {
            return false;
        }
        if !self.has_star || (!self.has_double_star && !channel.contains('/')) {
            return true;
        }
        self.nfa_matches(channel)
    }

    /// True iff the name starts with the first run, ends with the last, and holds the middle
    /// runs in order in between, without overlap. Exactly a match when each wildcard can
    /// stand for any text; otherwise a necessary condition.
    fn runs_fit(&self, channel: &str) -> bool {
        let (first, last) = (&self.runs[0], &self.runs[self.runs.len() - 1]);
        if channel.len() < first.len() + last.len()
            || !channel.starts_with(first.as_str())
            || !channel.ends_with(last.as_str())
        {
            return false;
        }
        let mut rest = &channel[first.len()..channel.len() - last.len()];
        for run in &self.runs[1..self.runs.len() - 1] {
            match rest.find(run.as_str()) {
                Some(at) => rest = &rest[at + run.len()..],
                None => return false,
            }
        }
        true
    }

    /// The token NFA run bit-parallel: one bit per position, a few word operations per char.
    fn nfa_matches(&self, channel: &str) -> bool {
        let nfa = &self.nfa;
        let words = nfa.words;
        let mut cur = vec![0u64; words];
        let mut next = vec![0u64; words];
        cur[0] = 1;
        nfa.close(&mut cur);
        for c in channel.chars() {
            let literal = nfa
                .chars
                .binary_search(&c)
                .ok()
                .map(|k| &nfa.literal[k * words..(k + 1) * words]);
            let mut carry = 0;
            for i in 0..words {
                let moved = literal.map_or(0, |m| cur[i] & m[i]);
                let stays = if c == '/' {
                    nfa.double_star[i]
                } else {
                    nfa.wild[i]
                };
                next[i] = (moved << 1) | carry | (cur[i] & stays);
                carry = moved >> 63;
            }
            if !nfa.close(&mut next) {
                return false;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        let end = self.tokens.len();
        cur[end / 64] & (1 << (end % 64)) != 0
    }

    /// Language inclusion: true iff every string matched by `self` is also matched by `other`.
    ///
    /// Conservative: answers `false` if the search bound ([`MAX_PRODUCT_STATES`]) is hit.
    pub fn is_subset_of(&self, other: &Pattern) -> bool {
        is_covered_by(self, std::slice::from_ref(other))
    }

    /// `**` (or `***`…): accepts every string.
    fn is_universal(&self) -> bool {
        self.tokens == [Token::DoubleStar]
    }

    /// Literal tokens before the first wildcard; every matched string starts with them.
    fn literal_prefix(&self) -> impl Iterator<Item = char> + '_ {
        self.tokens.iter().map_while(|t| match t {
            Token::Literal(c) => Some(*c),
            _ => None,
        })
    }

    /// Literal tokens after the last wildcard, reversed; every matched string ends with them.
    fn literal_suffix_rev(&self) -> impl Iterator<Item = char> + '_ {
        self.tokens.iter().rev().map_while(|t| match t {
            Token::Literal(c) => Some(*c),
            _ => None,
        })
    }
}

/// True iff the string contains an unescaped `*` (i.e. it is a pattern, not a concrete channel name).
///
/// Scans without allocating because it runs on every publish/subscribe.
pub fn has_wildcard(src: &str) -> bool {
    let mut chars = src.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => return true,
            '\\' => {
                if matches!(chars.clone().next(), Some('*' | '\\')) {
                    chars.next();
                }
            }
            _ => {}
        }
    }
    false
}

/// True iff every string matched by `p` is matched by at least one pattern in `set` (union inclusion).
///
/// Conservative: answers `false` if a search bound ([`MAX_PRODUCT_STATES`],
/// [`MAX_INCLUSION_WORK`]) is hit, so an authorisation check built on it can only under-grant.
pub fn is_covered_by(p: &Pattern, set: &[Pattern]) -> bool {
    covered_with_work(p, set).0
}

/// [`is_covered_by`], plus the work units the check spent (0 on its fast paths, at most about
/// [`MAX_INCLUSION_WORK`]). A caller on a request path charges that work to the requester, so a
/// client that makes the server search hard pays for it in its own rate budget.
pub fn covered_with_work(p: &Pattern, set: &[Pattern]) -> (bool, usize) {
    let mut work = 0;
    let included = check_inclusion_counting(p, set, &mut work) == Inclusion::Included;
    (included, work)
}

/// Upper bound on product states explored by [`is_covered_by`].
///
/// Each state is expanded over at most (distinct literal chars + 2) symbols at a cost linear in the
/// total token count. Real authorisation patterns (`app/*`, `fleet/sensor-*/telemetry`) reach a
/// few dozen states; only contrived patterns whose determinisation is exponential get near this,
/// and for those we prefer a fast "no" over unbounded CPU on a request path.
pub const MAX_PRODUCT_STATES: usize = 4096;

/// Upper bound on the work units (NFA positions advanced, bitset words built and hashed) spent by
/// one [`is_covered_by`] call: about a millisecond of CPU. The state bound alone does not cap
/// the time, because each state is expanded over every distinct literal character at a cost
/// linear in the tokens. Reaching the budget answers "not covered" (fail closed).
pub const MAX_INCLUSION_WORK: usize = 60_000;

/// Work units charged for each product step before counting positions (calibrated so a unit is
/// roughly one position advanced).
const STEP_COST: usize = 16;

fn tokenize(src: &str) -> Vec<Token> {
    let mut out = Vec::with_capacity(src.len());
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&escaped @ ('*' | '\\')) => {
                    chars.next();
                    out.push(Token::Literal(escaped));
                }
                // Lone backslash (before another char or at the end): literal, next char untouched.
                _ => out.push(Token::Literal('\\')),
            },
            '*' => {
                let mut run = 1usize;
                while chars.next_if_eq(&'*').is_some() {
                    run += 1;
                }
                out.push(if run == 1 {
                    Token::Star
                } else {
                    Token::DoubleStar
                });
            }
            other => out.push(Token::Literal(other)),
        }
    }
    out
}

/// Calls `add` for `pos` and every position reachable by letting wildcards match the empty string.
fn add_closed(tokens: &[Token], mut pos: usize, mut add: impl FnMut(usize)) {
    loop {
        add(pos);
        match tokens.get(pos) {
            Some(t) if t.is_wild() => pos += 1,
            _ => break,
        }
    }
}

/// The position reached from `pos` by consuming `c` (before closure), if any.
fn advance(tokens: &[Token], pos: usize, c: char) -> Option<usize> {
    match tokens.get(pos)? {
        Token::Literal(l) => (*l == c).then_some(pos + 1),
        Token::Star => (c != '/').then_some(pos),
        Token::DoubleStar => Some(pos),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inclusion {
    Included,
    /// A shortest string matched by `p` and by no member of the set.
    Counterexample(String),
    /// The search bound was hit.
    Unknown,
}

/// Can `a` and `b` match a common string? Only a cheap necessary test on literal prefix/suffix,
/// used to drop set members that cannot help cover `p` (shrinks the product without changing
/// the answer).
fn may_overlap(a: &Pattern, b: &Pattern) -> bool {
    a.literal_prefix()
        .zip(b.literal_prefix())
        .all(|(x, y)| x == y)
        && a.literal_suffix_rev()
            .zip(b.literal_suffix_rev())
            .all(|(x, y)| x == y)
}

/// A character not in `used` and not `/`: stands for the whole class of characters that no
/// literal token mentions (all wildcards treat them alike, no literal accepts them).
fn fresh_char(used: &[char]) -> char {
    ('a'..='z')
        .chain('0'..='9')
        .chain('!'..=char::MAX)
        .find(|c| *c != '/' && !used.contains(c))
        .unwrap_or('\u{FFFD}')
}

/// The union NFA of `p` (machine 0) and the relevant set members, states numbered globally.
struct Product<'a> {
    machines: Vec<&'a [Token]>,
    /// Global index of each machine's position 0.
    offsets: Vec<usize>,
    /// Global state → (machine, position).
    owner: Vec<(usize, usize)>,
    words: usize,
    /// Accepting states of the set machines.
    set_finals: Vec<usize>,
    /// Set-machine states sitting on a trailing `**`: once reached, every continuation is covered.
    set_universal: Vec<usize>,
}

type Bits = Vec<u64>;

fn bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

impl<'a> Product<'a> {
    fn new(machines: Vec<&'a [Token]>) -> Self {
        let mut offsets = Vec::with_capacity(machines.len());
        let mut owner = Vec::new();
        let mut set_finals = Vec::new();
        let mut set_universal = Vec::new();
        for (m, tokens) in machines.iter().enumerate() {
            let base = owner.len();
            offsets.push(base);
            owner.extend((0..=tokens.len()).map(|pos| (m, pos)));
            if m > 0 {
                set_finals.push(base + tokens.len());
                if tokens.last() == Some(&Token::DoubleStar) {
                    set_universal.push(base + tokens.len() - 1);
                }
            }
        }
        let words = owner.len().div_ceil(64);
        Product {
            machines,
            offsets,
            owner,
            words,
            set_finals,
            set_universal,
        }
    }

    fn start(&self) -> Bits {
        let mut out = vec![0; self.words];
        for (m, tokens) in self.machines.iter().enumerate() {
            let base = self.offsets[m];
            add_closed(tokens, 0, |i| set_bit(&mut out, base + i));
        }
        out
    }

    /// The successor state on `c`; adds the work done to `work`.
    fn step(&self, from: &[u64], c: char, work: &mut usize) -> Bits {
        let mut out = vec![0; self.words];
        // An allocation plus the words written: the fixed cost of one step.
        *work += STEP_COST + 2 * self.words;
        for (w, &word) in from.iter().enumerate() {
            let mut rest = word;
            while rest != 0 {
                let g = w * 64 + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                let (m, pos) = self.owner[g];
                let tokens = self.machines[m];
                *work += 1;
                if let Some(to) = advance(tokens, pos, c) {
                    let base = self.offsets[m];
                    add_closed(tokens, to, |i| {
                        *work += 1;
                        set_bit(&mut out, base + i);
                    });
                }
            }
        }
        out
    }

    /// Some prefix-path of `p` is still live (machine 0 occupies global states 0..=len).
    fn p_alive(&self, bits: &[u64]) -> bool {
        (0..=self.machines[0].len()).any(|i| bit(bits, i))
    }

    fn p_accepts(&self, bits: &[u64]) -> bool {
        bit(bits, self.machines[0].len())
    }

    fn set_accepts(&self, bits: &[u64]) -> bool {
        self.set_finals.iter().any(|&i| bit(bits, i))
    }

    fn set_universal(&self, bits: &[u64]) -> bool {
        self.set_universal.iter().any(|&i| bit(bits, i))
    }
}

/// Decides L(p) ⊆ ∪ L(set) by breadth-first subset construction over the union NFA.
///
/// Each product state is the set of NFA positions (of `p` and of every set member) reachable by
/// one input prefix; a state where `p` accepts but no member does is a counterexample. The
/// alphabet is abstracted to `/`, each literal character of the involved patterns, and one fresh
/// character standing for all others, which is exact because no token distinguishes the latter.
#[cfg(test)]
fn check_inclusion(p: &Pattern, set: &[Pattern]) -> Inclusion {
    check_inclusion_counting(p, set, &mut 0)
}

fn check_inclusion_counting(p: &Pattern, set: &[Pattern], work: &mut usize) -> Inclusion {
    if let Some(word) = p.literal() {
        return if set.iter().any(|q| q.matches(&word)) {
            Inclusion::Included
        } else {
            Inclusion::Counterexample(word)
        };
    }
    if set.iter().any(|q| q.is_universal() || q.tokens == p.tokens) {
        return Inclusion::Included;
    }

    let relevant: Vec<&Pattern> = set.iter().filter(|q| may_overlap(p, q)).collect();
    let mut alphabet: Vec<char> = std::iter::once(p)
        .chain(relevant.iter().copied())
        .flat_map(|q| q.tokens.iter())
        .filter_map(|t| match t {
            Token::Literal(c) => Some(*c),
            _ => None,
        })
        .chain(std::iter::once('/'))
        .collect();
    alphabet.sort_unstable();
    alphabet.dedup();
    alphabet.push(fresh_char(&alphabet));

    let product = Product::new(
        std::iter::once(p.tokens.as_slice())
            .chain(relevant.iter().map(|q| q.tokens.as_slice()))
            .collect(),
    );

    // states[i] with parents[i] = (previous state, char consumed) for witness reconstruction.
    let mut states: Vec<Bits> = Vec::new();
    let mut parents: Vec<Option<(usize, char)>> = Vec::new();
    let mut seen: HashSet<Bits> = HashSet::new();
    let mut queue = VecDeque::new();

    let start = product.start();
    seen.insert(start.clone());
    states.push(start);
    parents.push(None);
    queue.push_back(0usize);

    while let Some(idx) = queue.pop_front() {
        let cur = &states[idx];
        if product.set_universal(cur) {
            continue;
        }
        if product.p_accepts(cur) && !product.set_accepts(cur) {
            return Inclusion::Counterexample(witness(&parents, idx));
        }
        let successors: Vec<(Bits, char)> = alphabet
            .iter()
            .map(|&c| (product.step(cur, c, work), c))
            .filter(|(next, _)| product.p_alive(next))
            .collect();
        for (next, c) in successors {
            *work += product.words;
            if *work > MAX_INCLUSION_WORK {
                return Inclusion::Unknown;
            }
            if seen.contains(&next) {
                continue;
            }
            if states.len() >= MAX_PRODUCT_STATES {
                return Inclusion::Unknown;
            }
            seen.insert(next.clone());
            queue.push_back(states.len());
            states.push(next);
            parents.push(Some((idx, c)));
        }
    }
    Inclusion::Included
}

fn witness(parents: &[Option<(usize, char)>], mut idx: usize) -> String {
    let mut rev = Vec::new();
    while let Some((prev, c)) = parents[idx] {
        rev.push(c);
        idx = prev;
    }
    rev.iter().rev().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s)
    }

    fn m(p: &str, s: &str) -> bool {
        pat(p).matches(s)
    }

    fn sub(p: &str, q: &str) -> bool {
        pat(p).is_subset_of(&pat(q))
    }

    fn covered(p: &str, set: &[&str]) -> bool {
        let set: Vec<Pattern> = set.iter().map(|s| pat(s)).collect();
        is_covered_by(&pat(p), &set)
    }

    /// Backtracking reference matcher: exponential, but independent of the NFA code.
    fn naive(tokens: &[Token], s: &[char]) -> bool {
        match tokens.split_first() {
            None => s.is_empty(),
            Some((Token::Literal(c), rest)) => s.first() == Some(c) && naive(rest, &s[1..]),
            Some((Token::Star, rest)) => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != '/')
                .any(|i| naive(rest, &s[i..])),
            Some((Token::DoubleStar, rest)) => (0..=s.len()).any(|i| naive(rest, &s[i..])),
        }
    }

    /// xorshift64*: deterministic, dependency-free.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn string(&mut self, alphabet: &[char], max_len: usize) -> String {
            let len = self.below(max_len + 1);
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect()
        }
    }

    /// Every string over `alphabet` of length ≤ `max_len`.
    fn all_strings(alphabet: &[char], max_len: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..max_len {
            layer = layer
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            out.extend(layer.iter().cloned());
        }
        out
    }

    #[test]
    fn glob_spec_examples() {
        let chans = ["app_abc/room-1", "app_abc/sub/deep", "other/x"];
        let table = [
            ("app_abc/*", [true, false, false]),
            ("app_abc/**", [true, true, false]),
            ("**", [true, true, true]),
            ("app_abc/room-*", [true, false, false]),
        ];
        for (p, expect) in table {
            for (c, e) in chans.iter().zip(expect) {
                assert_eq!(m(p, c), e, "{p} vs {c}");
            }
        }
        assert!(m("room-*", "room-42"));
        assert!(!m("room-*", "admin-1"));
    }

    #[test]
    fn glob_anchored_and_literal() {
        assert!(m("abc", "abc"));
        assert!(!m("abc", "abcd"));
        assert!(!m("abc", "xabc"));
        assert!(!m("abc", ""));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("a/b/c", "a/b/c"));
        assert!(m("x*y", "xy"));
        assert!(m("x*y", "x-y-y"));
        assert!(!m("x*y", "x/y"));
        assert!(m("x**y", "x/y"));
        assert!(m("a/**/b", "a//b"));
        assert!(!m("a/**/b", "a/b"));
        assert!(m("a/**/b", "a/x/y/b"));
        assert!(m("héllo/*", "héllo/wörld"));
    }

    #[test]
    fn glob_escapes() {
        assert!(m(r"\*", "*"));
        assert!(!m(r"\*", "a"));
        assert!(!m(r"\*", ""));
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(m(r"\\", r"\"));
        assert!(!m(r"\\", r"\\"));
        // Escaped backslash followed by a real wildcard.
        assert!(m(r"\\*", r"\"));
        assert!(m(r"\\*", r"\abc"));
        assert!(!m(r"\\*", r"\a/b"));
        assert!(m(r"\\\*", r"\*"));
        assert!(!m(r"\\\*", r"\x"));
        // `\*` then `*`: literal star then wildcard.
        assert!(m(r"\**", "*abc"));
        assert!(!m(r"\**", "abc"));
        // Lone backslashes are literal and leave the next char alone.
        assert!(m(r"a\b", r"a\b"));
        assert!(!m(r"a\b", "ab"));
        assert!(m(r"a\", r"a\"));
        assert!(m(r"\", r"\"));
        assert!(m(r"\a*", r"\ax"));
        assert!(!m(r"\a*", r"\a/"));
    }

    #[test]
    fn glob_literal_accessors() {
        let p = pat(r"room\*1\\x\y");
        assert_eq!(p.as_str(), r"room\*1\\x\y");
        assert!(p.is_literal());
        assert_eq!(p.literal().as_deref(), Some(r"room*1\x\y"));
        assert!(p.matches(r"room*1\x\y"));

        let w = pat("room-*");
        assert!(!w.is_literal());
        assert_eq!(w.literal(), None);
        assert_eq!(w.as_str(), "room-*");
        assert_eq!(pat("").literal().as_deref(), Some(""));

        assert!(has_wildcard("a/*"));
        assert!(has_wildcard("**"));
        assert!(has_wildcard(r"\\*"));
        assert!(has_wildcard(r"\a*"));
        assert!(!has_wildcard(r"a/\*"));
        assert!(!has_wildcard(r"\\\*"));
        assert!(!has_wildcard("plain/name"));
        assert!(!has_wildcard(r"trailing\"));
        for s in ["a*", r"\*", r"\\*", r"\\\*", r"\", r"x\y*", "", "***"] {
            assert_eq!(has_wildcard(s), !pat(s).is_literal(), "{s}");
        }
    }

    #[test]
    fn glob_star_matches_empty() {
        assert!(m("*", ""));
        assert!(m("**", ""));
        assert!(m("a/*", "a/"));
        assert!(m("a/*/b", "a//b"));
        assert!(m("*a*", "a"));
        assert!(!m("*", "/"));
        assert!(m("**", "/"));
    }

    #[test]
    fn glob_triple_star_is_double() {
        assert_eq!(pat("***").tokens, pat("**").tokens);
        assert_eq!(pat("a/*****/b").tokens, pat("a/**/b").tokens);
        assert!(m("***", "a/b/c"));
        assert!(m("a/***", "a/b/c"));
        assert!(pat("***").is_universal());
        assert!(sub("**", "***"));
        assert!(sub("***", "**"));
    }

    #[test]
    fn glob_case_sensitive() {
        assert!(!m("Room-*", "room-1"));
        assert!(!m("room-*", "ROOM-1"));
        assert!(m("Room-*", "Room-1"));
        assert!(!sub("A/*", "a/*"));
    }

    #[test]
    fn glob_adversarial_patterns_are_fast() {
        let long_a = "a".repeat(256);
        assert!(!m("*a*a*a*a*a*a*b", &long_a));
        assert!(!m("**a**a**a**a**a**a**a**a**b", &long_a));
        let evil = "*a".repeat(150) + "b";
        assert!(!m(&evil, &long_a));
        let slashes = "a/".repeat(128);
        assert!(!m(&("**a/".repeat(60) + "b"), &slashes));
        // Inclusion on the same kind of shape must also terminate promptly.
        let _ = sub("*a*a*a*a*a*a*b", "*a*a*a*b");
        let _ = sub("**a**a**a**b", "**a*a*a*b");
    }

    #[test]
    fn glob_inclusion_truths() {
        let truths = [
            ("a/*", "a/**"),
            ("a/x*", "a/*"),
            ("a/*/b", "a/**"),
            ("a/*/b", "a/*/*"),
            ("a/*/b", "**/b"),
            ("a/b", "a/*"),
            ("a/b", "a/b"),
            ("a/*", "a/*"),
            ("a/*", "a/***"),
            ("**", "**"),
            ("**", "***"),
            ("*", "**"),
            ("*/*", "**"),
            ("*/*", "*/**"),
            ("a/b*", "a/*b*"),
            ("a*", "a**"),
            ("**/x", "**x"),
            (r"\*", "*"),
            (r"a/\*", "a/*"),
            ("app_abc/room-*", "app_abc/*"),
            ("app_abc/room-*", "app_abc/**"),
            ("app_abc/**", "**"),
            ("*a*a*b", "*a*b"),
            ("*ab*", "*a*"),
            ("a**b", "a**"),
            ("x", "*"),
            ("", "*"),
        ];
        for (p, q) in truths {
            assert!(sub(p, q), "{p} should be a subset of {q}");
        }
    }

    #[test]
    fn glob_inclusion_falsehoods() {
        let lies = [
            ("a/**", "a/*"),
            ("a/*", "a/x*"),
            ("**", "*"),
            ("**", "a/**"),
            ("**", "*/**"),
            ("**", "**/*"),
            ("*", "\\*"),
            ("a/*", "a/*/*"),
            ("a/*/*", "a/*"),
            ("a/*b*", "a/b*"),
            ("a**", "a*"),
            ("*", "a*"),
            ("*", "*a"),
            ("*a*b", "*a*a*b"),
            ("a/*", "b/*"),
            ("x/*.json", "x/*.xml"),
            ("A/*", "a/*"),
            ("a/b", "a/c"),
            ("*", "x"),
        ];
        for (p, q) in lies {
            assert!(!sub(p, q), "{p} should not be a subset of {q}");
            // Text matching would wrongly say yes for the first example.
            if let Inclusion::Counterexample(w) = check_inclusion(&pat(p), &[pat(q)]) {
                assert!(m(p, &w) && !m(q, &w), "bad witness {w:?} for {p} vs {q}");
            } else {
                panic!("expected a counterexample for {p} vs {q}");
            }
        }
        // The §9.3 trap: the text "a/**" is matched by `a/*`, yet the languages differ.
        assert!(m("a/*", "a/**"));
        assert!(!sub("a/**", "a/*"));
    }

    #[test]
    fn glob_union_coverage() {
        assert!(covered("a/*", &["a/x*", "a/*"]));
        assert!(!covered("a/*", &["a/x*", "a/y*"]));
        assert!(!covered("a/*", &[]));
        assert!(covered("a/b", &["c/*", "a/*"]));
        assert!(!covered("a/b", &["c/*", "a/c"]));
        assert!(covered("anything/at/all", &["**"]));
        // Genuine unions: no single member covers `p`.
        assert!(covered("a/**", &["a/*", "a/*/**"]));
        assert!(!sub("a/**", "a/*") && !sub("a/**", "a/*/**"));
        assert!(covered("**", &["*", "*/**"]));
        assert!(covered("**", &["*", "**/*"]));
        assert!(!covered("**", &["*", "*/*"]));
        assert!(covered("**", &["*", "*/*", "*/*/**"]));
        assert!(!covered("**", &["*", "*/*", "*/*/*/**"]));
        assert!(!covered("x*", &["x", "x*a", "x*b"]));
        assert!(covered("x*", &["x", "x*a", "x*"]));
        // Unrelated members are ignored without changing the answer.
        assert!(covered("app/*/t", &["zzz/*", "*.json", "app/**"]));
        assert!(!covered("app/**", &["zzz/*", "*.json", "app/*"]));
    }

    #[test]
    fn glob_search_bound_is_conservative() {
        // Q remembers which of the last 14 segments contained `a`: 2^14 product states.
        let tail = "/*".repeat(14);
        let q = pat(&format!("**a*{tail}"));
        let p = pat(&format!("b**a*{tail}"));
        assert_eq!(
            check_inclusion(&p, std::slice::from_ref(&q)),
            Inclusion::Unknown
        );
        assert!(!p.is_subset_of(&q));
        // Cheap cases around the same shapes are still answered exactly.
        assert!(q.is_subset_of(&q.clone()));
        assert!(p.is_subset_of(&pat("b**")));
        assert!(!q.is_subset_of(&pat("b**")));
    }

    #[test]
    fn glob_matcher_agrees_with_backtracking_reference() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let pat_alpha = ['a', 'b', '/', '*', '\\'];
        let str_alpha = ['a', 'b', '/', '*', '\\', 'c'];
        for _ in 0..2000 {
            let p = pat(&rng.string(&pat_alpha, 7));
            let s = rng.string(&str_alpha, 8);
            let chars: Vec<char> = s.chars().collect();
            assert_eq!(
                p.matches(&s),
                naive(&p.tokens, &chars),
                "{:?} vs {s:?}",
                p.as_str()
            );
        }
    }

    #[test]
    fn glob_random_inclusion_cross_check() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        let pat_alpha = ['a', 'b', '/', '*'];
        // 'c' stands for "any other character".
        let strings = all_strings(&['a', 'b', '/', 'c'], 5);
        let mut included = 0;
        let mut excluded = 0;
        for round in 0..600 {
            let p = pat(&rng.string(&pat_alpha, 5));
            let set_len = if round % 3 == 0 { 1 + rng.below(3) } else { 1 };
            let set: Vec<Pattern> = (0..set_len)
                .map(|_| pat(&rng.string(&pat_alpha, 5)))
                .collect();
            let covered_by_set = |w: &str| set.iter().any(|q| q.matches(w));
            match check_inclusion(&p, &set) {
                Inclusion::Included => {
                    included += 1;
                    for w in &strings {
                        assert!(
                            !p.matches(w) || covered_by_set(w),
                            "{:?} claimed covered by {:?}, but {w:?} escapes",
                            p.as_str(),
                            set.iter().map(Pattern::as_str).collect::<Vec<_>>()
                        );
                    }
                    for _ in 0..50 {
                        let w = rng.string(&['a', 'b', '/', 'c', 'd'], 10);
                        assert!(!p.matches(&w) || covered_by_set(&w));
                    }
                }
                Inclusion::Counterexample(w) => {
                    excluded += 1;
                    assert!(p.matches(&w) && !covered_by_set(&w), "bad witness {w:?}");
                }
                Inclusion::Unknown => panic!("tiny patterns must not hit the bound"),
            }
            if set_len == 1 {
                assert_eq!(
                    p.is_subset_of(&set[0]),
                    is_covered_by(&p, &set),
                    "single-member union must agree with is_subset_of"
                );
            }
        }
        // Make sure both outcomes were actually exercised.
        assert!(included > 50 && excluded > 50, "{included} / {excluded}");
    }

    #[test]
    fn glob_wildcard_count_and_complexity() {
        assert_eq!(pat("a/b").wildcard_count(), 0);
        assert_eq!(pat("a/*").wildcard_count(), 1);
        assert_eq!(pat("a/***/b*").wildcard_count(), 2);
        assert_eq!(pat(r"a/\*/\\*").wildcard_count(), 1);
        assert!(!pat(&"*a".repeat(MAX_WILDCARDS)).is_too_complex());
        assert!(pat(&"*a".repeat(MAX_WILDCARDS + 1)).is_too_complex());
    }

    #[test]
    fn glob_layout_splits_on_slashes_until_double_star() {
        let layout = pat(r"a/*/r-*/\*x").layout();
        assert!(layout.rest.is_none());
        assert!(matches!(&layout.segments[0], Segment::Literal(l) if l == "a"));
        assert!(matches!(layout.segments[1], Segment::Any));
        assert!(matches!(&layout.segments[2], Segment::Glob(g) if g.as_str() == "r-*"));
        assert!(matches!(&layout.segments[3], Segment::Literal(l) if l == "*x"));

        let deep = pat(r"a/b/x**\*/*").layout();
        assert_eq!(deep.segments.len(), 2);
        let rest = deep.rest.unwrap();
        assert_eq!(rest.as_str(), r"x**\*/*");
        assert_eq!(rest.tokens, pat(r"x**\*/*").tokens);
        assert_eq!(pat("**").layout().segments.len(), 0);
    }

    /// Matching through a [`Layout`], as the server's wildcard index does it.
    fn layout_matches(layout: &Layout, name: &str) -> bool {
        let mut rest = Some(name);
        for segment in &layout.segments {
            let Some(text) = rest else { return false };
            let (head, tail) = match text.split_once('/') {
                Some((h, t)) => (h, Some(t)),
                None => (text, None),
            };
            let ok = match segment {
                Segment::Literal(l) => l == head,
                Segment::Any => true,
                Segment::Glob(g) => g.matches(head),
            };
            if !ok {
                return false;
            }
            rest = tail;
        }
        match (&layout.rest, rest) {
            (None, None) => true,
            (Some(p), Some(text)) => p.matches(text),
            _ => false,
        }
    }

    #[test]
    fn glob_crafted_inclusion_is_bounded() {
        // Worst shapes found by hand against a typical key scope: many `*` and many distinct
        // literals (a big alphabet), which used to cost tens of milliseconds each.
        let keys = [pat("fleet/*/telemetry"), pat("fleet/**"), pat("app/*")];
        let crafted: String = "fleet/".to_string()
            + &(0..MAX_WILDCARDS)
                .map(|i| format!("*{}", char::from(b'a' + i as u8)))
                .collect::<String>()
            + "/telemetry";
        let _ = is_covered_by(&pat(&crafted), &keys);
        let long: String = "fleet/*".to_string() + &"ab*".repeat(40) + "/telemetry";
        let started = std::time::Instant::now();
        for _ in 0..10 {
            let _ = is_covered_by(&pat(&long), &keys[..1]);
        }
        // Not a timing assertion: printed for the record (run with --nocapture, release).
        println!("crafted inclusion: {:?} per check", started.elapsed() / 10);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn text(alphabet: &'static [char], max: usize) -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(alphabet), 0..=max)
                .prop_map(|chars| chars.into_iter().collect())
        }

        const PATTERN_CHARS: &[char] = &['a', 'b', '/', '*', '\\'];
        const NAME_CHARS: &[char] = &['a', 'b', '/', '*', '\\', 'c'];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn matcher_agrees_with_backtracking(p in text(PATTERN_CHARS, 9), s in text(NAME_CHARS, 10)) {
                let p = pat(&p);
                let chars: Vec<char> = s.chars().collect();
                prop_assert_eq!(p.matches(&s), naive(&p.tokens, &chars));
                prop_assert_eq!(p.matches(&s), p.nfa_matches(&s));
            }

            #[test]
            fn layout_agrees_with_matcher(p in text(PATTERN_CHARS, 9), s in text(NAME_CHARS, 10)) {
                let p = pat(&p);
                prop_assert_eq!(layout_matches(&p.layout(), &s), p.matches(&s));
            }

            #[test]
            fn inclusion_agrees_with_brute_force(
                p in text(&['a', 'b', '/', '*'], 5),
                set in proptest::collection::vec(text(&['a', 'b', '/', '*'], 5), 1..=2),
            ) {
                let p = pat(&p);
                let set: Vec<Pattern> = set.iter().map(|q| pat(q)).collect();
                let covered = |w: &str| set.iter().any(|q| q.matches(w));
                match check_inclusion(&p, &set) {
                    Inclusion::Included => {
                        // 'c' stands for every character no pattern mentions.
                        for w in all_strings(&['a', 'b', '/', 'c'], 5) {
                            prop_assert!(!p.matches(&w) || covered(&w), "{:?} escapes", w);
                        }
                    }
                    Inclusion::Counterexample(w) => {
                        prop_assert!(p.matches(&w) && !covered(&w), "bad witness {:?}", w);
                    }
                    Inclusion::Unknown => prop_assert!(false, "tiny patterns must not hit the bound"),
                }
            }
        }
    }
}
