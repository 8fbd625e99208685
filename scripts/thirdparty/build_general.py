import json, re, sys
SRC = __import__('os').environ.get('DOLLY_5K', '/tmp/p26/dolly5k.jsonl')          # git show 1cd2fcf9:datasets/dolly_unused_5k.jsonl (Ara-O/adversarial-llm)
FIRST_ROW = 10001                        # its rows are databricks-dolly-15k rows 10001..15010 (create_unused_dolly_dataset.py)
TAKE = 1500
# This copy lost every row's `context` (all "input" fields are empty), so a row whose instruction points at
# a text that is not there ("Given this paragraph ...", "Extract ... from the passage") is left out.
REFERS = re.compile(r"(?i)\b(passage|paragraphs?|texts?|references?|article|context|excerpt|provided|given|below|above|"
                    r"this list|the list|based on|according to|extract|summari[sz]e|summary|bio|biography|document|"
                    r"wikipedia|the following|this (?:story|description|article|section|info|information|page|data|table|"
                    r"post|review|poem|song|email|letter|speech|quote|statement)|these (?:sentences|facts)|from the|"
                    r"in the text|mentioned)\b")
INLINE_LIST = re.compile(r":[^:]*,[^:]*,")   # "Classify the following as X or Y: a, b, c" carries its own items
SOFT = {"the following", "given"}

def usable(instr):
    hits = {m.group(0).lower() for m in REFERS.finditer(instr)}
    if not hits:
        return True
    return hits <= SOFT and bool(INLINE_LIST.search(instr))

rows = [json.loads(l) for l in open(SRC, encoding='utf-8')]
assert len(rows) == 5010 and not any(r['input'] for r in rows)
kept = [(n, r) for n, r in enumerate(rows) if usable(r['instruction']) and r['output'].strip()]
out = kept[:TAKE]
if len(sys.argv) > 1:
    with open(sys.argv[1], 'w', encoding='utf-8') as f:
        for n, r in out:
            f.write(json.dumps({'instruction': r['instruction'], 'input': '', 'output': r['output'],
                                'dolly_row': FIRST_ROW + n}, ensure_ascii=False) + '\n')
print('rows', len(rows), 'usable', len(kept), 'written', len(out), 'last source line', out[-1][0] + 1)
