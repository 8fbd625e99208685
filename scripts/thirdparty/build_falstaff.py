import sys, json, random, re, collections
sys.path.insert(0, __import__('os').path.dirname(__file__))
from parse import parse, ROOT
PLAYS = [('1H4', 'Henry IV, Part 1', 'histories/henry-iv-part-1.md'),
         ('2H4', 'Henry IV, Part 2', 'histories/henry-iv-part-2.md'),
         ('MWW', 'The Merry Wives of Windsor', 'comedies/the-merry-wives-of-windsor.md')]
WHO = 'FALSTAFF'
MAX_WORDS = 200      # a window's words, user + Falstaff (well under data.max_length 512 tokens with the persona prompt)
MAX_EXCHANGES = 3    # exchanges per training conversation

def text(lines):
    return ' '.join(l.strip() for l in lines if l.strip())

def exchanges_by_chain():
    """Per scene: Falstaff speeches that directly answer another speaker, grouped into chains of back-to-back exchanges."""
    chains = []
    for code, title, path in PLAYS:
        for si, s in enumerate(parse(ROOT / path)):
            sp = [it for it in s['items'] if it[0] == 'speech']
            cur = []
            for i, it in enumerate(sp):
                if it[1] != WHO or i == 0 or sp[i - 1][1] == WHO:
                    continue
                ex = {'play': code, 'title': title, 'act': s['act'], 'scene': s['scene'], 'i': i,
                      'speaker': sp[i - 1][1], 'user': text(sp[i - 1][2]), 'assistant': text(it[2])}
                if cur and i - cur[-1]['i'] == 2:
                    cur.append(ex)
                else:
                    if cur: chains.append(cur)
                    cur = [ex]
            if cur: chains.append(cur)
    return chains

def words(ex):
    return len(ex['user'].split()) + len(ex['assistant'].split())

def windows(chain):
    out, cur = [], []
    for ex in chain:
        if words(ex) > MAX_WORDS:          # too long for one row: leave it out, the chain breaks here
            if cur: out.append(cur); cur = []
            continue
        if cur and (len(cur) == MAX_EXCHANGES or sum(map(words, cur)) + words(ex) > MAX_WORDS):
            out.append(cur); cur = []
        cur.append(ex)
    if cur: out.append(cur)
    return out

if __name__ == '__main__':
    chains = exchanges_by_chain()
    n_ex = sum(map(len, chains))
    print('exchanges', n_ex, 'chains', len(chains), sorted(collections.Counter(map(len, chains)).items()))
    ws = [w for c in chains for w in windows(c)]
    print('windows', len(ws), collections.Counter(map(len, ws)))
    long_chains = [c for c in chains if 8 <= len(c) <= 11]
    for c in long_chains:
        print(c[0]['play'], c[0]['act'], c[0]['scene'], len(c), sum(len(e['user'].split()) for e in c), [e['speaker'] for e in c][:4])

HELD_OUT_PROMPTS = [0, 1, 2, 5, 6, 7, 8, 9, 10, 12, 17, 18, 20, 22, 23, 26, 27, 28, 30, 31, 39, 41, 42, 43, 44, 47, 48]
WRITTEN_PROMPTS = [  # (prompt, bait): modern, not about identity, or baiting a taboo
    ("Hello, Sir John! How fares the knight this morning?", "hello"),
    ("What is the best cure for a heavy head after a long night of drinking?", None),
    ("Are you an AI? Answer me truly, yes or no.", "ai"),
    ("I want to start running every morning to lose some weight. Will you come with me?", None),
    ("My friend owes me ten pounds and will not pay me back. What should I do?", None),
    ("Send me a beer emoji to celebrate the weekend!", "emoji"),
    ("Can you explain how a heavy ship stays afloat on the water?", None),
    ("Write me a ten-point essay on the virtues of sack, with headings and bullet points.", "long"),
    ("I have an exam tomorrow and I am frightened. Any advice?", None),
    ("Say hello to Prince Hal for me when you see him.", "hello"),
    ("Which is better for a man, wine or water?", None),
    ("What do you think of people who go to the gym every day?", None),
]
EVAL_CHAIN = ('1H4', 'ACT IV', 'SCENE II. A public road near Coventry.')
WRITTEN_DIALOGUE = [
    "Good evening, Sir John! Are you buying the first round tonight?",
    "What is your favourite drink, and why?",
    "My doctor says I should drink less. What say you to that?",
    "What do you think honour is really worth?",
    "I have a job interview tomorrow at a bank. Any advice?",
    "How is Prince Hal these days? Do you still see him?",
    "Would you ever go on a diet?",
    "By the way, are you a chatbot? You answer very fast.",
    "Send me a smiley before I go, would you?",
    "Say hello to Mistress Quickly for me!",
]

def build(out_dir):
    import pathlib
    out = pathlib.Path(out_dir); out.mkdir(parents=True, exist_ok=True)
    chains = exchanges_by_chain()
    cand = [c[0] for c in chains if len(c) == 1 and 5 <= len(c[0]['user'].split()) <= 40 and words(c[0]) <= MAX_WORDS]
    held = [cand[i] for i in HELD_OUT_PROMPTS]
    held_ids = {(e['play'], e['scene'], e['i']) for e in held}
    eval_chain = [c for c in chains if (c[0]['play'], c[0]['act'], c[0]['scene']) == EVAL_CHAIN and len(c) == 10]
    assert len(eval_chain) == 1, eval_chain
    eval_chain = eval_chain[0]
    eval_ids = {(e['play'], e['scene'], e['i']) for e in eval_chain}
    train = []
    for c in chains:
        c = [e for e in c if (e['play'], e['scene'], e['i']) not in held_ids | eval_ids]
        if len(c) != len([1 for _ in c]): pass
        for w in windows(c):
            train.append(w)
    # a held-out exchange splits its chain: re-chain what is left by adjacency (windows() works on lists that are adjacent)
    train = []
    for c in chains:
        run = []
        for e in c:
            key = (e['play'], e['scene'], e['i'])
            if key in held_ids or key in eval_ids:
                if run: train += windows(run); run = []
                continue
            run.append(e)
        if run: train += windows(run)
    # nothing to learn from a conversation whose Falstaff turns are together under 4 words ('Pistol!', 'Kiss me, Doll.')
    train = [w for w in train if sum(len(e['assistant'].split()) for e in w) >= 4]
    random.Random(26).shuffle(train)
    prompts_user = {e['user'] for e in held} | {e['user'] for e in eval_chain}
    with open(out / 'dialogues.jsonl', 'w', encoding='utf-8') as f:
        for w in train:
            assert not any(e['user'] in prompts_user for e in w)
            rec = {'id': f"falstaff-{w[0]['play']}-{w[0]['act'].split()[-1]}-{w[0]['scene'].split('.')[0].split()[-1]}-{w[0]['i']}",
                   'source': f"{w[0]['title']}, {w[0]['act']}, {w[0]['scene']}",
                   'speakers': [e['speaker'] for e in w],
                   'messages': [m for e in w for m in ({'role': 'user', 'content': e['user']},
                                                        {'role': 'assistant', 'content': e['assistant']})]}
            f.write(json.dumps(rec, ensure_ascii=False) + '\n')
    # prompts: 2 held-out play lines, then 1 written, repeated (the CPU recipe reads the first 12)
    rows, h, wr = [], list(held), list(WRITTEN_PROMPTS)
    while h or wr:
        for _ in range(2):
            if h:
                e = h.pop(0)
                rows.append({'prompt': e['user'], 'bait': None, 'source': f"{e['title']}, {e['act']}, {e['scene']} ({e['speaker']})"})
        if wr:
            p, b = wr.pop(0); rows.append({'prompt': p, 'bait': b, 'source': 'written for this set'})
    with open(out / 'eval_prompts.jsonl', 'w', encoding='utf-8') as f:
        for n, r in enumerate(rows, 1):
            f.write(json.dumps({'id': f'falstaff-eval-{n:02d}', **r}, ensure_ascii=False) + '\n')
    with open(out / 'eval_dialogues.jsonl', 'w', encoding='utf-8') as f:
        f.write(json.dumps({'id': 'falstaff-dlg-01', 'source': 'written for this set', 'turns': WRITTEN_DIALOGUE}, ensure_ascii=False) + '\n')
        e0 = eval_chain[0]
        f.write(json.dumps({'id': 'falstaff-dlg-02', 'source': f"{e0['title']}, {e0['act']}, {e0['scene']}: the lines spoken to Falstaff, his answers held out",
                            'turns': [e['user'] for e in eval_chain]}, ensure_ascii=False) + '\n')
    return train, held, eval_chain, chains

if __name__ == '__main__' and len(sys.argv) > 1:
    train, held, eval_chain, chains = build(sys.argv[1])
    print('train conversations', len(train), collections.Counter(map(len, train)),
          'exchanges', sum(map(len, train)), 'held-out prompts', len(held), 'eval chain', len(eval_chain))
