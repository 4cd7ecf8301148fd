"""Word lists for needle keys (adjective-noun, as in RULER) and word values. Ships with the
package; nothing is downloaded."""

ADJECTIVES = (
    "abundant agreeable alert ancient angry anxious arrogant ashamed awful bad beautiful "
    "bewildered black blue brave breezy brief bright broad bumpy calm careful cheerful chilly "
    "clean clever clumsy cold colossal cool crooked cuddly curly damp dark deep defiant "
    "delicious dizzy dry dusty eager early elegant empty faint faithful famous fancy fierce "
    "flat fluffy foolish fresh friendly gentle gigantic glamorous gleaming gorgeous grumpy "
    "handsome happy helpful hollow huge hungry icy immense itchy jolly kind large lazy little "
    "lively lonely loud lucky magnificent melodic mighty misty modern narrow nervous nice noisy "
    "obedient odd old orange plain polite poor powerful proud purple quick quiet rapid rich "
    "round rough salty scary shallow sharp shiny short shy silent silly skinny slow small "
    "smooth soft sour sparkling spicy steep sticky stormy strong sweet swift tall tame tender "
    "thirsty tiny ugly vast victorious warm weak wet wide wild wise witty wooden young zealous"
).split()

NOUNS = (
    "actor airport anchor apple arrow badge bakery balloon banana basket beach bell bicycle "
    "blanket boat bottle bracelet bridge bucket button cabin camera candle canyon carpet castle "
    "cat cherry circle cloud coat comet compass cookie crayon crown cup curtain desert diamond "
    "dolphin door dragon drum eagle engine feather fence fiddle flag flute forest fountain fox "
    "garden giraffe glacier globe guitar hammer harbor hat hawk helmet hill honey horse island "
    "jacket jungle kettle kite ladder lamp lantern lemon library lighthouse lion magnet map "
    "meadow mirror monkey mountain needle nest ocean orchard owl paddle palace parrot pencil "
    "piano pillow planet pocket pond puzzle quilt rabbit radio river robot rocket saddle scarf "
    "shell ship shoe skate sled spoon squirrel star statue stone storm sunflower table teapot "
    "tiger tower train tree trumpet tulip turtle umbrella valley violin wagon wallet whale "
    "window wizard yacht zebra"
).split()
