"""A built-in suite of small, clearly different classification tasks for demos and tests.

Each task is a little grammar: per label, several sentence templates whose ``{slots}`` are
filled from word lists. Several phrasings per label and slots shared between labels mean no
single word gives the label away, yet a small sentence encoder learns each task in seconds.
Everything is generated here from a seed: no downloads, the same files for the same seed.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from tasks.errors import TaskError
from tasks.loaders import build_spec
from tasks.spec import SPLITS, TaskSpec

__all__ = ["DEMO_TASKS", "write_demo_suite"]

DEFAULT_SIZES = {"train": 400, "dev": 100, "test": 200}


def _words(text: str) -> tuple[str, ...]:
    """'a|b|c' -> ('a', 'b', 'c'): keeps the long word lists below readable."""
    return tuple(word.strip() for word in text.split("|"))


@dataclass(frozen=True)
class _Grammar:
    description: str
    templates: Mapping[str, Sequence[str]]  # label -> sentence templates with {slot}s
    slots: Mapping[str, Sequence[str]]  # slot name -> fillers; "{city2}" draws from "city"
    casual: bool = False  # vary the surface like typed commands ("hey, play jazz")


_TOPIC = _Grammar(
    description="Demo: news sentences by topic (world, sports, business, science).",
    templates={
        "world": (
            "{leader} of {country} met {country2}'s foreign minister to discuss {issue}.",
            "Protesters filled the streets of {capital} after {political_event}.",
            "The United Nations urged {un_action} in {region} as {crisis} deepened.",
            "Voters in {country} go to the polls {when} in a closely watched {election}.",
            "{country} and {country2} signed an agreement on {issue} after {talks} of talks.",
            "Thousands of families fled {region} after {disaster} destroyed {infrastructure}.",
            "The parliament of {country} approved a bill on {issue} despite objections from {opposition}.",
            "The ambassador of {country} was summoned in {capital} over {dispute}.",
            "Peace talks between {country} and {country2} resumed {when} in {capital}.",
        ),
        "sports": (
            "{team} beat {team2} {score} to reach the {cup} final.",
            "{athlete} won the {event} at the {meet}, setting a new {record} record.",
            "{team} sacked their manager after {count} straight defeats.",
            "{team} signed a {position} from {team2} for a club-record fee.",
            "A {injury} will keep {athlete} out of the {cup} for {layoff}.",
            "Fans celebrated as {team} clinched the league title with a {score} win over {team2}.",
            "{athlete} retired from {sport} after {career}.",
            "The {cup} semi-final between {team} and {team2} ended {draw} after extra time.",
            "{athlete} crashed out of the {tournament} in the {round}.",
        ),
        "business": (
            "Shares in {company} {rose} {pct} percent after {quarter} profits beat forecasts.",
            "Shares in {company} fell {pct} percent after it warned about {econ_factor}.",
            "{company} agreed to buy {company2} for {amount} billion dollars.",
            "The central bank {rate_move} interest rates by {bps} basis points {rate_context}.",
            "{company} will cut {jobs} jobs as demand for {product} slows.",
            "Oil prices {moved} as investors weighed {econ_factor}.",
            "Retail sales in {country} {changed} in {month}, official figures showed.",
            "{company} raised its full-year outlook on strong sales of {product}.",
            "Regulators fined {company} {amount} million dollars over {violation}.",
            "Inflation in {country} {changed} to {pct} percent in {month}.",
        ),
        "science": (
            "Researchers at {university} found that {organism} can {ability}.",
            "A new {device} from {lab} uses {technology} to {benefit}.",
            "Astronomers detected {space_object} about {distance} light-years from Earth.",
            "A trial of {patients} patients found that {treatment} reduced {condition}.",
            "Engineers tested a {vehicle} powered by {energy}.",
            "{lab} released a software update that fixes {bug}.",
            "Scientists sequenced the genome of {organism} to study {research_goal}.",
            "The {mission} probe sent back images of {surface}.",
            "A study published in {journal} suggests that {finding}.",
            "Physicists at {university} built a {instrument} that {achievement}.",
        ),
    },
    slots={
        "leader": _words(
            "The president|The prime minister|The foreign minister|The chancellor|The king|"
            "The interior minister"
        ),
        "country": _words(
            "Brazil|Kenya|Norway|Vietnam|Canada|Egypt|Indonesia|Poland|Chile|Japan|Morocco|Peru|"
            "Ghana|Turkey|Mexico|Finland|Nepal|Argentina"
        ),
        "capital": _words(
            "Nairobi|Hanoi|Lima|Warsaw|Cairo|Jakarta|Oslo|Santiago|Ankara|Kathmandu|Accra|Rabat"
        ),
        "issue": _words(
            "border security|refugee resettlement|nuclear disarmament|fishing rights|"
            "water sharing|climate finance|trade sanctions|a ceasefire|prisoner exchanges|"
            "visa rules|election monitoring"
        ),
        "political_event": _words(
            "a disputed election|the arrest of an opposition leader|a sudden rise in fuel taxes|"
            "the dismissal of the chief justice|a vote to delay elections"
        ),
        "un_action": _words(
            "an immediate ceasefire|humanitarian access|restraint from all sides|"
            "the release of detained journalists|urgent food deliveries"
        ),
        "region": _words(
            "the northern provinces|the border region|the coastal districts|"
            "the disputed highlands|the southern delta|the eastern valleys"
        ),
        "crisis": _words(
            "the humanitarian crisis|the food shortage|the fighting|the refugee emergency|"
            "the drought"
        ),
        "when": _words("on Sunday|next week|this weekend|on Thursday|later this month"),
        "election": _words("presidential runoff|parliamentary election|referendum|regional vote"),
        "talks": _words("two years|months|several rounds|a decade"),
        "disaster": _words("severe flooding|a powerful earthquake|a cyclone|landslides|a volcanic eruption"),
        "infrastructure": _words("bridges and roads|hundreds of homes|the main power line|several villages"),
        "opposition": _words(
            "opposition parties|rights groups|regional governors|church leaders|trade unions"
        ),
        "dispute": _words(
            "a spying scandal|an expelled diplomat|a border incident|"
            "remarks by the defence minister"
        ),
        "team": _words(
            "Riverton Rovers|Northport United|the Harbour City Sharks|Eastfield Athletic|"
            "Lakeside Wanderers|the Redhill Falcons|Westbrook FC|the Summit Bears|Kingsbay Town|"
            "the Valley Comets"
        ),
        "score": _words("2-1|3-0|4-2|1-0|2-0|3-1|5-3"),
        "draw": _words("1-1|2-2|0-0|3-3"),
        "cup": _words("national cup|champions league|continental cup|league cup"),
        "athlete": _words(
            "Maria Okafor|Jonas Lindqvist|Aiko Tanaka|Diego Ramos|Priya Nair|Tom Becker|"
            "Lena Novak|Samuel Mensah|Chloe Martin|Ravi Patel"
        ),
        "event": _words(
            "100 metres|marathon|long jump|400 metres hurdles|giant slalom|200 metres freestyle|"
            "triple jump"
        ),
        "meet": _words(
            "world championships|indoor grand prix|national trials|Olympic qualifiers|"
            "diamond league meeting"
        ),
        "record": _words("personal|national|championship|course|world"),
        "count": _words("five|six|seven|eight|nine"),
        "position": _words("striker|goalkeeper|midfielder|winger|central defender|point guard"),
        "injury": _words("hamstring injury|broken wrist|knee injury|ankle sprain|shoulder problem"),
        "layoff": _words("three weeks|the rest of the season|two months|six weeks"),
        "sport": _words("tennis|cycling|professional boxing|rugby|swimming|basketball"),
        "career": _words(
            "fifteen seasons|three Olympic medals|a record-breaking career|"
            "twenty years on the tour"
        ),
        "tournament": _words("open|masters|world tour finals|grand slam event"),
        "round": _words("first round|second round|quarter-finals|semi-finals"),
        "company": _words(
            "Northwind Foods|Apex Logistics|Bluewave Telecom|Granite Bank|Solara Energy|"
            "Meridian Motors|Cobalt Retail|Pinecrest Insurance|Helix Pharmaceuticals|"
            "Vantage Airlines|Orchard Textiles"
        ),
        "rose": _words("rose|jumped|climbed|surged"),
        "pct": _words("2|3.5|4|6|8|11|12|15"),
        "quarter": _words("first-quarter|second-quarter|third-quarter|fourth-quarter|annual"),
        "amount": _words("1.2|3|4.5|7|12|18|25"),
        "rate_move": _words("raised|cut|lowered|lifted"),
        "bps": _words("25|50|75"),
        "rate_context": _words(
            "citing stubborn inflation|as growth slowed|after a weak jobs report|"
            "to steady the currency"
        ),
        "jobs": _words("300|1,200|2,500|4,000|800|10,000"),
        "product": _words(
            "electric cars|smartphones|frozen meals|office furniture|business software|"
            "air travel|home loans"
        ),
        "moved": _words("rose sharply|fell|edged higher|slipped|steadied"),
        "econ_factor": _words(
            "weaker demand from China|a stronger dollar|new production cuts|"
            "slowing factory output|rising inventories|higher borrowing costs"
        ),
        "changed": _words("rose|fell|slowed|picked up|edged down"),
        "month": _words("January|March|April|June|August|October|November"),
        "violation": _words(
            "misleading customers|accounting errors|breaches of competition law|"
            "late disclosure of losses|weak anti-money-laundering controls"
        ),
        "university": _words(
            "the University of Leeds|MIT|ETH Zurich|Kyoto University|the University of Cape Town|"
            "Stanford|McGill University|the Max Planck Institute"
        ),
        "organism": _words(
            "deep-sea octopuses|honeybees|a soil bacterium|tardigrades|coral polyps|"
            "desert beetles|zebrafish"
        ),
        "ability": _words(
            "sense magnetic fields|survive extreme radiation|repair damaged tissue|"
            "communicate with light signals|recognise individual faces"
        ),
        "device": _words("smartwatch|hearing aid|laptop chip|home battery|VR headset|drone"),
        "lab": _words("Lumen Labs|Quanta Systems|Byteforge|Nimbus Computing|Arclight Robotics"),
        "technology": _words(
            "machine learning|a graphene sensor|solid-state cells|low-power radar|"
            "on-device speech recognition"
        ),
        "benefit": _words(
            "detect irregular heartbeats|double battery life|translate speech offline|"
            "map rooms in 3D|filter background noise"
        ),
        "space_object": _words(
            "a rocky exoplanet|a pair of merging black holes|a young star surrounded by dust|"
            "a galaxy from the early universe|a rapidly spinning neutron star"
        ),
        "distance": _words("40|120|1,300|6,500|13 billion"),
        "patients": _words("200|450|1,100|3,000"),
        "treatment": _words(
            "a daily dose of vitamin D|a new malaria vaccine|an experimental gene therapy|"
            "a cheap blood-pressure pill|a nasal spray"
        ),
        "condition": _words(
            "hospital stays|the risk of stroke|symptoms of asthma|migraine attacks|"
            "infection rates"
        ),
        "vehicle": _words("prototype aircraft|delivery robot|solar car|autonomous ferry|lunar rover"),
        "energy": _words("liquid hydrogen|sodium batteries|solar panels|a compact nuclear battery"),
        "bug": _words(
            "a battery drain problem|a security flaw in the browser|crashes when opening photos|"
            "a bug in the encryption library"
        ),
        "research_goal": _words(
            "how it resists disease|why it ages so slowly|its ability to regrow limbs|"
            "how it adapted to cold water"
        ),
        "mission": _words("Aurora|Horizon|Kestrel|Odyssey"),
        "surface": _words(
            "an icy moon|a dust storm on Mars|the rings of Saturn|a rocky asteroid|"
            "the far side of the Moon"
        ),
        "journal": _words("Nature|Science|The Lancet|Cell|Physical Review Letters"),
        "finding": _words(
            "sleep helps the brain clear waste|microplastics reach deep ocean trenches|"
            "early humans used fire earlier than thought|"
            "some trees share nutrients through fungi"
        ),
        "instrument": _words("quantum sensor|laser clock|particle detector|superconducting magnet"),
        "achievement": _words(
            "keeps time to within a second in 30 billion years|detects single photons|"
            "works at room temperature|breaks the previous field-strength record"
        ),
    },
)

_SENTIMENT = _Grammar(
    description="Demo: product reviews by sentiment (positive, negative).",
    templates={
        # Both labels share products, aspects and sentence shapes, and negation ("Not terrible at
        # all") puts negative words into positive reviews: the label is in the whole sentence.
        "positive": (
            "I {love} this {product}; the {aspect} is {pos_adj}.",
            "{pos_adj} {aspect} and {pos_adj2} {aspect2}, I would {again}.",
            "The {product} arrived {timing} and has worked {pos_adv} ever since.",
            "Honestly the best {product} I have bought in {span}.",
            "Not {neg_adj} at all, the {aspect} exceeded my expectations.",
            "My {relative} {loves} the {product} we got for {occasion}.",
            "{high_stars}: the {aspect} is {pos_adj} and the {aspect2} is {pos_adj2}.",
            "Worth every penny, the {aspect} is {pos_adj}.",
            "After {span_short} of daily use the {product} still feels {pos_feel}.",
            "I was {doubt} at first, but this {product} won me over with its {aspect}.",
        ),
        "negative": (
            "I regret buying this {product}; the {aspect} is {neg_adj}.",
            "{neg_adj} {aspect} and {neg_adj2} {aspect2}, I want my money back.",
            "The {product} broke after {span_short} and customer support {support_fail}.",
            "Honestly the worst {product} I have bought in {span}.",
            "Not {pos_adj} at all, the {aspect} was a real letdown.",
            "My {relative} returned the {product} we got for {occasion} after {span_short}.",
            "{low_stars}: the {aspect} is {neg_adj} and the {aspect2} is {neg_adj2}.",
            "A waste of money, the {aspect} is {neg_adj}.",
            "After {span_short} of daily use the {product} already feels {neg_feel}.",
            "I had high hopes, but this {product} let me down with its {aspect}.",
        ),
    },
    slots={
        "love": _words("love|adore|really like|am delighted with|am thrilled with"),
        "loves": _words("loves|adores|really likes|is delighted with|cannot stop using"),
        "product": _words(
            "blender|pair of headphones|coffee maker|backpack|phone case|desk lamp|"
            "vacuum cleaner|e-reader|rice cooker|pair of running shoes|electric kettle|"
            "office chair"
        ),
        "aspect": _words(
            "battery life|sound quality|build quality|price|design|customer service|packaging|"
            "setup process|fit|instruction manual|noise level|material"
        ),
        "pos_adj": _words(
            "excellent|superb|fantastic|solid|impressive|great|wonderful|reliable|outstanding|"
            "brilliant"
        ),
        "neg_adj": _words(
            "terrible|awful|flimsy|disappointing|poor|useless|mediocre|dreadful|shoddy|"
            "frustrating"
        ),
        "again": _words("recommend it to anyone|buy it again|order another one|give it as a gift"),
        "timing": _words("a day early|right on time|well packaged|earlier than promised"),
        "pos_adv": _words("flawlessly|perfectly|beautifully|without a hitch"),
        "span": _words("years|a long time|ages|the last decade"),
        "span_short": _words("two weeks|a month|three days|a couple of uses|six weeks"),
        "relative": _words("mother|brother|partner|daughter|grandfather|roommate|best friend"),
        "occasion": _words("a birthday|Christmas|our anniversary|the new flat|a housewarming"),
        "high_stars": _words("Five stars|Four stars|Five out of five|Ten out of ten"),
        "low_stars": _words("One star|Two stars|Zero stars if I could|One out of five"),
        "pos_feel": _words("sturdy|brand new|premium|comfortable|well made"),
        "neg_feel": _words("cheap|wobbly|worn out|loose|ready for the bin"),
        "doubt": _words("sceptical|unsure|hesitant|doubtful"),
        "support_fail": _words(
            "never replied|kept me on hold for hours|refused a replacement|"
            "blamed me for the fault"
        ),
    },
)

_INTENT = _Grammar(
    description="Demo: assistant commands by intent (alarm, music, weather, list, message).",
    templates={
        "set_alarm": (
            "Set an alarm for {time} {day}.",
            "Wake me up at {time} {day}, please.",
            "Can you {create} an alarm at {time} {day}?",
            "I need to be up by {time} {day}, set an alarm.",
            "Change my {weekday} alarm to {time}.",
            "Please set a {alarm_kind} alarm for {time}.",
            "Make sure I wake up at {time} {day}.",
            "I have an early {appointment} {day}, wake me at {time}.",
            "Set a {alarm_kind} alarm for {time} {day}.",
            "Snooze the alarm for {minutes} minutes.",
        ),
        "play_music": (
            "Play some {genre} {room}.",
            "Put on {artist}, please.",
            "I want to hear the {release} by {artist}.",
            "Can you start my {playlist} playlist {room}?",
            "Shuffle songs by {artist} {room}.",
            "Turn on some {genre} for {activity}.",
            "I'm in the mood for {genre}, put something on.",
            "Skip this song and play something by {artist}.",
            "Play the {release} by {artist} {room}.",
            "Could you play {genre} {room} while I'm {chore}?",
        ),
        "get_weather": (
            "What's the weather like in {city} {day}?",
            "Will it {precip} in {city} {day}?",
            "Do I need {gear} {day}?",
            "How {temp_adj} will it be in {city} {day}?",
            "Give me the forecast for {city} for {period}.",
            "Is it going to be sunny in {city} {day}?",
            "What's the temperature in {city} right now?",
            "Should I expect {weather_noun} in {city} {day}?",
        ),
        "add_to_list": (
            "Add {item} to my {list_name} list.",
            "Put {item} and {item2} on the {list_name} list.",
            "Don't let me forget {item}, add it to my {list_name} list.",
            "Can you note {item} on my {list_name} list?",
            "We're out of {item}, add it to the {list_name} list.",
            "Put {item} on the list for {store}.",
            "Write down {item} and {item2} for {store}.",
        ),
        "send_message": (
            "Text {contact} that {msg}.",
            "Send a message to {contact} saying {msg}.",
            "Tell {contact} on {app} that {msg}.",
            "Can you message {contact} that {msg}?",
            "Let {contact} know that {msg}.",
            "Shoot {contact} a quick text: {msg}.",
            "Reply to {contact} and say {msg}.",
            "Send {contact} a {app} message that {msg}.",
        ),
    },
    slots={
        "time": _words(
            "6:30|7 am|5:45|6 o'clock|half past seven|8:15|noon|9 pm|quarter to six|4:50|5 am|"
            "7:20|six fifteen|10:30"
        ),
        "day": _words(
            "tomorrow|tomorrow morning|on Monday|tonight|this afternoon|on Saturday|on Friday|"
            "on Wednesday|every weekday"
        ),
        "appointment": _words("flight|meeting|train|dentist appointment|shift|exam"),
        "chore": _words("cooking|cleaning up|doing the dishes|folding laundry|working"),
        "create": _words("set|schedule|create|put in"),
        "weekday": _words("Monday|Tuesday|Friday|Sunday|weekday|weekend"),
        "alarm_kind": _words("gentle|loud|backup|vibrating|second"),
        "minutes": _words("5|10|15|20"),
        "genre": _words(
            "jazz|lo-fi beats|classical music|eighties rock|reggae|country music|hip hop|"
            "ambient music|salsa|blues|k-pop|piano covers"
        ),
        "room": _words(
            "in the kitchen|on the living room speaker|in the car|in the bedroom|"
            "on my headphones|in the bathroom|in the garden"
        ),
        "artist": _words(
            "Taylor Swift|Miles Davis|Beyoncé|the Beatles|Adele|Coldplay|Bob Marley|"
            "Billie Eilish|Ed Sheeran|Nina Simone|Daft Punk|Shakira|Elton John|Fela Kuti"
        ),
        "release": _words("new single|live album|acoustic set|greatest hits|latest record"),
        "playlist": _words("workout|morning|road trip|focus|chill|party|sleep"),
        "activity": _words("cooking|studying|a run|the commute|a dinner party"),
        "city": _words("Paris|Chicago|Lagos|Sydney|Berlin|Toronto|Mumbai|Seoul|Boston|Lisbon|Denver"),
        "precip": _words("rain|snow|hail|storm|drizzle"),
        "weather_noun": _words("rain|snow|thunderstorms|strong winds|fog"),
        "gear": _words("an umbrella|a coat|sunscreen|gloves|a jacket|boots"),
        "temp_adj": _words("hot|cold|warm|chilly|windy|humid"),
        "period": _words("the weekend|the next three days|tomorrow|Friday|the week ahead"),
        "item": _words(
            "milk|eggs|bread|oat milk|dish soap|batteries|coffee beans|tomatoes|toilet paper|"
            "olive oil|rice|dog food|birthday candles|light bulbs|printer paper"
        ),
        "list_name": _words("shopping|grocery|weekend|to-buy|hardware store"),
        "store": _words("the supermarket|the pharmacy|the hardware store|the market on Saturday"),
        "contact": _words("Mum|Dad|Sarah|my boss|Alex|the team|Grandma|David|my landlord|Priya|Coach Miller"),
        "msg": _words(
            "I'm running ten minutes late|I'll be home for dinner|the meeting moved to three|"
            "I picked up the kids|I can't make it tonight|dinner is ready|I landed safely|"
            "the keys are under the mat|I'll call after work"
        ),
        "app": _words("WhatsApp|Signal|Telegram|Slack"),
    },
    casual=True,
)

_GRAMMARS = {"demo-topic": _TOPIC, "demo-sentiment": _SENTIMENT, "demo-intent": _INTENT}
DEMO_TASKS: tuple[str, ...] = tuple(_GRAMMARS)

_SLOT = re.compile(r"\{([a-z_]+?)(\d?)\}")
_OPENERS = ("Hey, ", "Okay, ", "Hi, ", "Quick one: ")


def _fill(template: str, slots: Mapping[str, Sequence[str]], rng: random.Random) -> str:
    used: dict[str, list[str]] = {}

    def pick(match: re.Match[str]) -> str:
        # "{team}" and "{team2}" in one template draw two different teams.
        base = match.group(1)
        taken = used.setdefault(base, [])
        value = rng.choice([v for v in slots[base] if v not in taken])
        taken.append(value)
        return value

    text = _SLOT.sub(pick, template)
    return text[0].upper() + text[1:]


def _casual(text: str, rng: random.Random) -> str:
    # Typed commands are sloppy: sometimes an opener, sometimes lower case and no full stop.
    keep_case = text.startswith(("I ", "I'"))
    roll = rng.random()
    if roll < 0.2:
        return rng.choice(_OPENERS) + (text if keep_case else text[0].lower() + text[1:])
    if roll < 0.4:
        return (text if keep_case else text[0].lower() + text[1:]).rstrip(".")
    return text


def _capacity(grammar: _Grammar, label: str) -> int:
    """How many different texts the templates of ``label`` can make (before casual variants)."""
    total = 0
    for template in grammar.templates[label]:
        count, used = 1, Counter()
        for base, _ in _SLOT.findall(template):
            count *= len(grammar.slots[base]) - used[base]  # repeated slots draw distinct values
            used[base] += 1
        total += count
    return total


def _shares(n: int, labels: Sequence[str]) -> dict[str, int]:
    """Split n examples over the labels as evenly as possible (earlier labels get the rest)."""
    base, extra = divmod(n, len(labels))
    return {label: base + (i < extra) for i, label in enumerate(labels)}


def _generate(
    task: str, grammar: _Grammar, sizes: Mapping[str, int], seed: int
) -> dict[str, list[dict[str, str]]]:
    """Rows ({"text", "label"}) per split, stratified by label, with no text repeated."""
    # A string seed is hashed deterministically by random.Random (unlike hash()), and differs per
    # task so the tasks do not draw in lockstep.
    rng = random.Random(f"{task}:{seed}")
    labels = sorted(grammar.templates)
    shares = {split: _shares(n, labels) for split, n in sizes.items()}
    seen: set[str] = set()  # membership only: order always comes from the lists below
    pools: dict[str, list[str]] = {}
    for label in labels:
        need = sum(share[label] for share in shares.values())
        # Random draws slow down as the pool nears the number of possible texts; refuse early
        # instead of spinning (the default sizes use a few percent of it).
        if need > _capacity(grammar, label) // 2:
            raise TaskError(
                f"demo task {task!r} cannot make {need} different {label!r} texts "
                f"(at most {_capacity(grammar, label) // 2}); ask for smaller sizes"
            )
        pool: list[str] = []
        for attempt in itertools.count():
            if len(pool) == need:
                break
            if attempt > 50 * need + 1000:  # a safety net; the capacity check makes this rare
                raise TaskError(
                    f"demo task {task!r} cannot make {need} different {label!r} texts; ask for smaller sizes"
                )
            text = _fill(rng.choice(grammar.templates[label]), grammar.slots, rng)
            # Unique within the task, so no text is in two splits. Checked before the casual
            # variation, so "Play jazz." and "hey, play jazz" cannot land in train and test.
            if text not in seen:
                seen.add(text)
                pool.append(_casual(text, rng) if grammar.casual else text)
        pools[label] = pool
    out: dict[str, list[dict[str, str]]] = {}
    for split, share in shares.items():
        rows = []
        for label in labels:  # stratified: every split has the same label balance
            rows += [{"text": t, "label": label} for t in pools[label][: share[label]]]
            pools[label] = pools[label][share[label]:]
        rng.shuffle(rows)
        out[split] = rows
    return out


def write_demo_suite(
    out_dir: str | Path,
    seed: int = 0,
    *,
    sizes: Mapping[str, int] | None = None,
    tasks: Sequence[str] | None = None,
) -> list[TaskSpec]:
    """Write the demo tasks under ``out_dir/<task>/{train,dev,test}.jsonl`` and return their specs.

    ``sizes`` maps split -> rows (default 400/100/200); a split of size 0 is not written.
    ``tasks`` picks a subset of ``DEMO_TASKS``. Same seed, same files.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise TaskError(f"unknown split(s) {unknown} in sizes; valid splits: {', '.join(SPLITS)}")
    if sizes.get("train", 0) < 1 or any(n < 0 for n in sizes.values()):
        raise TaskError(f"sizes {sizes} need a positive 'train' size and no negative sizes")
    names = DEMO_TASKS if tasks is None else tuple(tasks)
    for name in names:
        if name not in _GRAMMARS:
            raise TaskError(f"unknown demo task {name!r}; valid demo tasks: {', '.join(DEMO_TASKS)}")
    sizes = {split: sizes[split] for split in SPLITS if sizes.get(split, 0) > 0}

    specs = []
    for name in names:
        grammar = _GRAMMARS[name]
        task_dir = Path(out_dir) / name
        task_dir.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:  # a split left out this time must not linger from an earlier call
            (task_dir / f"{split}.jsonl").unlink(missing_ok=True)
        paths = {}
        for split, rows in _generate(name, grammar, sizes, seed).items():
            paths[split] = task_dir / f"{split}.jsonl"
            with paths[split].open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        labels = sorted(grammar.templates)
        specs.append(build_spec(name, **paths, labels=labels, description=grammar.description))
    return specs
