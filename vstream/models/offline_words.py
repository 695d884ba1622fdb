"""Common English words for the offline tokenizer of the random-weight presets (one token each).

Random weights pick tokens almost uniformly: with these words in the vocabulary a newcomer sees
words (``the red person moves near the board``) where bytes alone would print replacement characters.
Written for vstream; lowercase, ASCII, no duplicates.
"""

WORDS = """
the a an and or but of to in on at by for with from into over under near behind before after
is are was were be been has have had do does did can could will would should may might must
this that these those it its they them their there here what which who where when why how
not no yes all some many more most few each every other another same new old first last next
one two three four five six seven eight nine ten hundred thousand half both
i you he she we me him her us my your our his
man woman person people child children boy girl student teacher speaker player driver crowd
team group family friend doctor worker officer guard audience class
room hall kitchen office street road car bus train truck bike bicycle door window wall floor
table chair desk board screen slide camera phone laptop computer keyboard book paper page
pen marker bag box bottle cup glass plate food water tree grass flower sky cloud sun rain snow
light shadow field park garden river lake sea beach mountain hill city town building house
bridge tower sign poster map chart graph picture image video frame scene view shot
hand arm head face eye eyes mouth hair leg foot body back side top bottom left right middle
center front corner edge line circle square shape dot arrow text word words letter number
red green blue yellow orange purple pink black white gray grey brown dark bright small large
big little long short tall wide narrow round flat empty full open closed clean quiet loud
moves moving move walks walking walk runs running run stands standing sits sitting sit
talks talking speaks speaking says said shows showing show points pointing looks looking look
holds holding opens opening closes closing enters entering leaves leaving turns turning
writes writing reads reading draws drawing plays playing goes going comes coming
starts starting stops stopping waits waiting watches watching appears appearing changes
falls rises passes picks puts takes gives makes made seen saw see find found keep kept
then now again still just only also very really quickly slowly later soon once while until
because about around through across along between during without within toward away up down
time second seconds minute minutes hour moment start end beginning part rest place way kind
thing things something nothing everything anything question answer idea point example
today morning evening night day week year
game ball goal score match race lecture lesson talk meeting news report story event
happens happened alert motion object objects color colour size position
good bad great nice fine clear simple main important possible ready
""".split()
