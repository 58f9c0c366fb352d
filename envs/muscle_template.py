"""pwm-bench's own musculoskeletal lower body: 11 boxes and 152 muscle-tendon units, no files needed.

This is the model of the ``muscle_humanoid`` env. It has the skeleton of DiffRL's SNU humanoid
(the bodies, masses, box sizes, joint types and hinge limits of the MASS lower body, as listed in
DiffRL's model builder) but its own rest-pose geometry and its own muscles, so it runs without the
MASS files. It is returned as a :class:`~pwm_bench.envs.mass.MassModel`, the type the MASS reader
produces, so both envs share the builder, the muscle kernel and the env code.

How the model was derived
-------------------------
**Skeleton.** The bodies, masses, box sizes and joints are DiffRL's: pelvis 15 kg (free), femur 7 kg
(ball), tibia 3 kg (hinge, flexion 0 to 2.3 rad), talus 0.6 kg (ball; the box is the whole hind- and
midfoot), big toe and lesser toes 0.2 kg each (hinges, ±0.6 rad). The rest pose is a straight stance
laid out from adult proportions: hip centres 8.5 cm either side of the midline and 5 cm below the
pelvis centre, thigh 0.41 m, shank 0.42 m, ankle 7.5 cm above the ground, heel 5 cm behind and toe
joints 10 cm in front of the ankle. The pelvis centre is 0.955 m high and the soles are 1 cm above
the ground. Axes follow the MASS convention (y up, facing +z, the right leg at −x), which the builder
turns into pwm-bench's z-up frame facing +x.

**Muscles.** 44 muscles per leg, taken from the standard anatomy of the human hip, thigh, leg and
foot, each given by bony landmarks: origin, via points where the real muscle wraps around bone or
runs under a retinaculum, and insertion. Broad muscles are split into strands (gluteus maximus 4,
adductor magnus 4, the vasti 3/3/2, soleus 3, ...) whose attachments are spread evenly along the
origin and insertion areas. That makes 76 units per leg and 152 in all, the action size of the SNU
humanoid:

===============================  ==================================================================
bodies crossed                   muscles (strands)
===============================  ==================================================================
pelvis–femur (24)                gluteus maximus (4), medius (3), minimus (2), iliacus (3), adductor
                                 longus, brevis, magnus (4), pectineus, piriformis, obturator
                                 internus, externus, quadratus femoris, gemelli
pelvis–femur–tibia (9)           rectus femoris (2), sartorius, gracilis, semitendinosus,
                                 semimembranosus (2), biceps femoris long head, tensor fasciae latae
femur–tibia (10)                 vastus lateralis (3), medialis (3), intermedius (2), biceps femoris
                                 short head, popliteus
femur–tibia–foot (5)             gastrocnemius medial (2) and lateral (2) heads, plantaris
tibia–foot (12)                  soleus (3), tibialis anterior (2), tibialis posterior (2), peroneus
                                 longus (2), brevis (2), tertius
tibia–foot–big toe (4)           extensor (2) and flexor (2) hallucis longus
tibia–foot–lesser toes (6)       extensor (3) and flexor (3) digitorum longus
foot–toes (6)                    extensor and flexor hallucis brevis, abductor hallucis, extensor
                                 and flexor digitorum brevis, abductor digiti minimi
===============================  ==================================================================

Peak isometric forces ``f0`` [N] are round numbers of the size reported for adult lower-limb models
(for example Delp et al., IEEE TBME 37(8), 1990), split evenly over a muscle's strands; they sum to
30.9 kN per leg (the MASS units of the SNU humanoid sum to 27.6 kN per leg). The tests check the
functional signs: every knee extensor extends the knee, every plantarflexor plantarflexes the
ankle, and so on, from the moment arms of the rest pose.

Units are ordered muscle by muscle and strand by strand, right unit then left unit (action ``2k``
is a right-leg unit, ``2k + 1`` its mirror image). For the optional Hill-type law
(``env.muscle_model=hill``) every unit's tendon takes 20 % of its rest path and its fibres the other
80 %, which is their optimal length (``lm = 0.8``, ``lt = 0.2`` as fractions of the rest path, the
MASS convention); ``pen_angle`` and ``lmax`` are 0 and unused.
"""

from __future__ import annotations

import numpy as np

from pwm_bench.envs.mass import LOWER_BODY, MassModel, MassMuscle, MassNode, Transform, to_joint_frames

# --------------------------------------------------------------------------------------------------
# skeleton: masses, box sizes (x lateral, y up, z forward) and joints of DiffRL's SNU lower body

_BODIES: dict[str, tuple[float, tuple[float, float, float]]] = {
    "Pelvis": (15.0, (0.2083, 0.1454, 0.1294)),
    "Femur": (7.0, (0.1271, 0.4043, 0.1398)),
    "Tibia": (3.0, (0.1198, 0.4156, 0.1141)),
    "Talus": (0.6, (0.0756, 0.0498, 0.1570)),
    "FootThumb": (0.2, (0.0407, 0.0262, 0.0563)),
    "FootPinky": (0.2, (0.0422, 0.0238, 0.0529)),
}

FIBRE_OPTIMAL = 0.8
"""Optimal fibre length of every unit as a fraction of its rest path length (Hill law only)."""
TENDON_SLACK = 0.2
"""Tendon length of every unit as a fraction of its rest path length (Hill law only): the rest
pose puts every fibre at its optimal length."""

PELVIS_HEIGHT = 0.955
"""Rest height of the pelvis centre (the root joint) [m]."""

# joint centres of the right leg as (lateral distance from the midline, height, forward) [m];
# the left leg is the mirror image
_HIP = (0.085, PELVIS_HEIGHT - 0.05, 0.0)
_KNEE = (0.085, _HIP[1] - 0.41, 0.0)
_ANKLE = (0.085, _KNEE[1] - 0.42, 0.0)
_SOLE = _ANKLE[1] - 0.065  # underside of the foot box, 1 cm above the ground
_THUMB = (0.068, _SOLE + 0.0131, 0.100)  # big-toe joint, mid-height of its box
_PINKY = (0.104, _SOLE + 0.0119, 0.097)  # lesser-toe joint

# body-box centres of the right leg in the same coordinates
_BOX_CENTRE: dict[str, tuple[float, float, float]] = {
    "Femur": (0.085, (_HIP[1] + _KNEE[1]) / 2, 0.0),
    "Tibia": (0.085, (_KNEE[1] + _ANKLE[1]) / 2, 0.0),
    "Talus": (0.085, _SOLE + 0.0249, 0.030),
    "FootThumb": (0.068, _THUMB[1], 0.100 + 0.0563 / 2),
    "FootPinky": (0.104, _PINKY[1], 0.097 + 0.0529 / 2),
}
_JOINT: dict[str, tuple[float, float, float]] = {
    "Femur": _HIP,
    "Tibia": _KNEE,
    "Talus": _ANKLE,
    "FootThumb": _THUMB,
    "FootPinky": _PINKY,
}
_PARENT = {"Femur": "Pelvis", "Tibia": "Femur", "Talus": "Tibia", "FootThumb": "Talus", "FootPinky": "Talus"}
_HINGE_LIMITS = {"Tibia": (0.0, 2.3), "FootThumb": (-0.6, 0.6), "FootPinky": (-0.6, 0.6)}

# --------------------------------------------------------------------------------------------------
# bony landmarks of the right side, (lateral, up, forward) [m] from the body's joint centre (the
# pelvis: from its centre). "Lateral" is away from the midline for the pelvis, and away from the
# leg's own axis (towards the little toe) for the leg bones.

_LANDMARKS: dict[str, dict[str, tuple[float, float, float]]] = {
    "Pelvis": {
        "asis": (0.115, 0.045, 0.055),  # anterior superior iliac spine
        "aiis": (0.100, 0.000, 0.060),  # anterior inferior iliac spine
        "acetabular_rim": (0.105, -0.020, 0.050),
        "crest_anterior": (0.125, 0.060, 0.030),
        "crest_lateral": (0.130, 0.070, -0.010),
        "crest_posterior": (0.090, 0.070, -0.050),
        "psis": (0.045, 0.050, -0.070),  # posterior superior iliac spine
        "sacrum": (0.025, 0.010, -0.085),
        "coccyx": (0.008, -0.045, -0.080),
        "gluteal_surface": (0.120, 0.030, -0.020),
        "gluteal_anterior": (0.125, 0.040, 0.020),
        "iliac_fossa_anterior": (0.085, 0.045, 0.030),
        "iliac_fossa_posterior": (0.065, 0.050, -0.020),
        "pelvic_brim": (0.075, -0.030, 0.060),  # iliopubic eminence: iliacus turns over it
        "pecten": (0.045, -0.035, 0.050),  # superior pubic ramus
        "pubic_tubercle": (0.020, -0.050, 0.055),
        "pubic_body": (0.012, -0.065, 0.045),
        "inferior_pubic_ramus": (0.025, -0.090, 0.030),
        "ischial_ramus": (0.045, -0.095, -0.010),
        "ischial_tuberosity": (0.060, -0.090, -0.045),
        "ischial_spine": (0.055, -0.040, -0.045),
        "obturator_inner": (0.045, -0.065, 0.010),
        "obturator_outer": (0.052, -0.070, 0.020),
        "greater_sciatic_notch": (0.070, -0.020, -0.050),
        "lesser_sciatic_notch": (0.068, -0.055, -0.045),
    },
    "Femur": {
        "trochanter_top": (0.040, 0.000, -0.010),
        "trochanter_lateral": (0.050, -0.025, -0.005),
        "trochanter_anterior": (0.042, -0.020, 0.015),
        "trochanter_posterior": (0.040, -0.020, -0.030),
        "trochanteric_fossa": (0.030, -0.010, -0.020),
        "intertrochanteric_crest": (0.025, -0.045, -0.028),
        "neck_anterior": (0.010, -0.030, 0.030),
        "neck_inferior": (0.020, -0.045, -0.028),  # obturator externus winds under the neck
        "lesser_trochanter": (-0.010, -0.060, -0.015),
        "pectineal_line": (0.000, -0.080, -0.022),
        "gluteal_tuberosity": (0.030, -0.090, -0.025),
        "linea_aspera_proximal": (0.010, -0.120, -0.028),
        "linea_aspera_middle": (0.005, -0.200, -0.028),
        "linea_aspera_distal": (0.000, -0.280, -0.025),
        "adductor_tubercle": (-0.030, -0.360, -0.010),
        "lateral_lip_proximal": (0.038, -0.070, 0.000),
        "lateral_lip_middle": (0.030, -0.200, -0.005),
        "intertrochanteric_line": (-0.005, -0.070, 0.018),
        "medial_lip_distal": (-0.015, -0.280, -0.015),
        "shaft_anterior_proximal": (0.010, -0.100, 0.024),
        "shaft_anterior_middle": (0.005, -0.220, 0.026),
        "lateral_supracondylar_ridge": (0.020, -0.280, -0.026),
        "suprapatellar_medial": (-0.010, -0.380, 0.045),
        "suprapatellar": (0.000, -0.380, 0.048),
        "suprapatellar_lateral": (0.012, -0.380, 0.045),
        "medial_condyle_posterior": (-0.025, -0.385, -0.032),
        "lateral_condyle_posterior": (0.025, -0.385, -0.032),
        "lateral_supracondylar": (0.022, -0.360, -0.030),
        "lateral_epicondyle": (0.040, -0.400, -0.005),
        "sartorius_middle": (-0.020, -0.200, 0.020),
        "medial_condyle_wrap": (-0.042, -0.390, -0.012),
        "semimembranosus_wrap": (-0.022, -0.370, -0.042),
        "semitendinosus_wrap": (-0.032, -0.380, -0.038),
        "biceps_wrap": (0.030, -0.370, -0.040),
        "iliotibial_trochanter": (0.058, -0.020, 0.000),
        "iliotibial_distal": (0.046, -0.360, 0.008),
    },
    "Tibia": {
        "tuberosity": (0.000, -0.070, 0.040),
        "pes_anserinus": (-0.025, -0.080, 0.020),
        "medial_condyle_posterior": (-0.025, -0.030, -0.028),
        "fibular_head": (0.035, -0.050, -0.015),
        "gerdy_tubercle": (0.025, -0.040, 0.025),
        "popliteal_line": (-0.010, -0.070, -0.030),
        "soleal_line": (0.000, -0.110, -0.030),
        "fibula_posterior_proximal": (0.035, -0.100, -0.022),
        "gastrocnemius_medial_wrap": (-0.020, -0.060, -0.048),
        "gastrocnemius_lateral_wrap": (0.020, -0.060, -0.048),
        "achilles": (0.000, -0.360, -0.045),
        "lateral_shaft_proximal": (0.015, -0.120, 0.022),
        "lateral_shaft_middle": (0.015, -0.220, 0.020),
        "interosseous_proximal": (0.010, -0.130, -0.012),
        "interosseous_middle": (0.010, -0.230, -0.012),
        "posterior_shaft_medial": (-0.010, -0.200, -0.022),
        "posterior_shaft_medial_distal": (-0.010, -0.270, -0.022),
        "fibula_posterior_middle": (0.030, -0.250, -0.018),
        "fibula_posterior_distal": (0.030, -0.300, -0.018),
        "fibula_lateral_proximal": (0.042, -0.110, -0.005),
        "fibula_lateral_middle": (0.040, -0.200, -0.005),
        "fibula_lateral_distal": (0.036, -0.290, -0.008),
        "fibula_anterior_proximal": (0.028, -0.120, 0.012),
        "fibula_anterior_middle": (0.025, -0.220, 0.012),
        "fibula_anterior_distal": (0.028, -0.320, 0.012),
        "medial_malleolus": (-0.025, -0.400, -0.022),
        "lateral_malleolus": (0.036, -0.405, -0.026),
        "retinaculum": (0.000, -0.390, 0.036),
        "retinaculum_lateral": (0.018, -0.390, 0.034),
    },
    "Talus": {
        "calcaneal_tuberosity": (0.000, -0.035, -0.050),
        "calcaneal_tuberosity_medial": (-0.008, -0.033, -0.050),
        "calcaneus_medial_plantar": (-0.015, -0.055, -0.040),
        "calcaneus_plantar": (0.000, -0.060, -0.035),
        "calcaneus_lateral_plantar": (0.020, -0.055, -0.035),
        "calcaneus_dorsolateral": (0.025, -0.035, 0.010),
        "sustentaculum": (-0.025, -0.045, -0.005),
        "navicular_tuberosity": (-0.025, -0.040, 0.035),
        "medial_cuneiform": (-0.020, -0.030, 0.060),
        "retinaculum_medial": (-0.015, -0.022, 0.040),
        "retinaculum_lateral": (0.015, -0.022, 0.040),
        "first_metatarsal_base": (-0.015, -0.058, 0.060),
        "cuboid_groove": (0.030, -0.055, 0.030),
        "peroneal_trochlea": (0.036, -0.032, -0.012),
        "fifth_metatarsal_base": (0.038, -0.048, 0.055),
        "fifth_metatarsal_dorsal": (0.035, -0.035, 0.065),
        "fifth_metatarsal_plantar": (0.036, -0.058, 0.060),
        "plantar_cuneiforms": (-0.005, -0.060, 0.040),
        "dorsal_head_thumb": (-0.017, -0.038, 0.095),
        "dorsal_head_pinky": (0.019, -0.040, 0.092),
        "plantar_arch_thumb": (-0.017, -0.060, 0.045),
        "plantar_arch_pinky": (0.010, -0.060, 0.045),
        "plantar_head_thumb": (-0.017, -0.062, 0.095),
        "plantar_head_thumb_medial": (-0.030, -0.058, 0.090),
        "plantar_head_pinky": (0.019, -0.062, 0.090),
    },
    "FootThumb": {
        "dorsal_base": (0.0, 0.010, 0.010),
        "dorsal_tip": (0.0, 0.010, 0.045),
        "plantar_base": (0.0, -0.010, 0.010),
        "plantar_tip": (0.0, -0.010, 0.045),
        "medial_base": (-0.018, -0.005, 0.010),
    },
    "FootPinky": {
        "dorsal_base": (0.0, 0.010, 0.010),
        "dorsal_tip": (0.0, 0.010, 0.040),
        "plantar_base": (0.0, -0.010, 0.010),
        "plantar_tip": (0.0, -0.010, 0.040),
        "lateral_base": (0.018, -0.005, 0.010),
    },
}

# --------------------------------------------------------------------------------------------------
# the muscles: (name, f0 of the whole muscle [N], strands, path). A path waypoint is
# "Body:landmark" or "Body:landmark_a..landmark_b"; strand k of n sits at t = (k + 1/2) / n between
# a and b (origins and insertions spread along an attachment area).

MUSCLES: tuple[tuple[str, float, int, tuple[str, ...]], ...] = (
    # hip: pelvis to femur
    (
        "gluteus_maximus",
        1400.0,
        4,
        (
            "Pelvis:crest_posterior..coccyx",
            "Femur:trochanter_posterior",
            "Femur:gluteal_tuberosity..iliotibial_trochanter",
        ),
    ),
    (
        "gluteus_medius",
        1800.0,
        3,
        ("Pelvis:crest_anterior..crest_posterior", "Femur:trochanter_anterior..trochanter_posterior"),
    ),
    (
        "gluteus_minimus",
        600.0,
        2,
        ("Pelvis:gluteal_anterior..gluteal_surface", "Femur:trochanter_anterior..trochanter_top"),
    ),
    (
        "iliacus",
        1000.0,
        3,
        (
            "Pelvis:iliac_fossa_anterior..iliac_fossa_posterior",
            "Pelvis:pelvic_brim",
            "Femur:neck_anterior",
            "Femur:lesser_trochanter",
        ),
    ),
    ("adductor_longus", 600.0, 1, ("Pelvis:pubic_tubercle", "Femur:linea_aspera_middle")),
    ("adductor_brevis", 400.0, 1, ("Pelvis:inferior_pubic_ramus", "Femur:linea_aspera_proximal")),
    (
        "adductor_magnus",
        2000.0,
        4,
        ("Pelvis:inferior_pubic_ramus..ischial_tuberosity", "Femur:linea_aspera_proximal..adductor_tubercle"),
    ),
    ("pectineus", 250.0, 1, ("Pelvis:pecten", "Femur:pectineal_line")),
    ("piriformis", 450.0, 1, ("Pelvis:sacrum", "Pelvis:greater_sciatic_notch", "Femur:trochanter_top")),
    (
        "obturator_internus",
        350.0,
        1,
        ("Pelvis:obturator_inner", "Pelvis:lesser_sciatic_notch", "Femur:trochanteric_fossa"),
    ),
    ("obturator_externus", 300.0, 1, ("Pelvis:obturator_outer", "Femur:neck_inferior", "Femur:trochanteric_fossa")),
    ("quadratus_femoris", 350.0, 1, ("Pelvis:ischial_tuberosity", "Femur:intertrochanteric_crest")),
    ("gemelli", 250.0, 1, ("Pelvis:ischial_spine", "Femur:trochanteric_fossa")),
    # biarticular: pelvis to tibia, wrapping on the femur
    ("rectus_femoris", 1200.0, 2, ("Pelvis:aiis..acetabular_rim", "Femur:suprapatellar", "Tibia:tuberosity")),
    (
        "sartorius",
        250.0,
        1,
        ("Pelvis:asis", "Femur:sartorius_middle", "Femur:medial_condyle_wrap", "Tibia:pes_anserinus"),
    ),
    ("gracilis", 200.0, 1, ("Pelvis:pubic_body", "Femur:medial_condyle_wrap", "Tibia:pes_anserinus")),
    ("semitendinosus", 400.0, 1, ("Pelvis:ischial_tuberosity", "Femur:semitendinosus_wrap", "Tibia:pes_anserinus")),
    (
        "semimembranosus",
        1200.0,
        2,
        ("Pelvis:ischial_tuberosity..ischial_ramus", "Femur:semimembranosus_wrap", "Tibia:medial_condyle_posterior"),
    ),
    ("biceps_femoris_long", 900.0, 1, ("Pelvis:ischial_tuberosity", "Femur:biceps_wrap", "Tibia:fibular_head")),
    (
        "tensor_fasciae_latae",
        250.0,
        1,
        ("Pelvis:asis", "Femur:iliotibial_trochanter", "Femur:iliotibial_distal", "Tibia:gerdy_tubercle"),
    ),
    # knee: femur to tibia
    (
        "vastus_lateralis",
        1800.0,
        3,
        ("Femur:lateral_lip_proximal..lateral_lip_middle", "Femur:suprapatellar_lateral", "Tibia:tuberosity"),
    ),
    (
        "vastus_medialis",
        1300.0,
        3,
        ("Femur:intertrochanteric_line..medial_lip_distal", "Femur:suprapatellar_medial", "Tibia:tuberosity"),
    ),
    (
        "vastus_intermedius",
        1300.0,
        2,
        ("Femur:shaft_anterior_proximal..shaft_anterior_middle", "Femur:suprapatellar", "Tibia:tuberosity"),
    ),
    (
        "biceps_femoris_short",
        800.0,
        1,
        ("Femur:lateral_supracondylar_ridge", "Femur:biceps_wrap", "Tibia:fibular_head"),
    ),
    ("popliteus", 250.0, 1, ("Femur:lateral_epicondyle", "Tibia:popliteal_line")),
    # calf: femur to heel, over the knee
    (
        "gastrocnemius_medial",
        1500.0,
        2,
        (
            "Femur:medial_condyle_posterior",
            "Tibia:gastrocnemius_medial_wrap",
            "Tibia:achilles",
            "Talus:calcaneal_tuberosity",
        ),
    ),
    (
        "gastrocnemius_lateral",
        700.0,
        2,
        (
            "Femur:lateral_condyle_posterior",
            "Tibia:gastrocnemius_lateral_wrap",
            "Tibia:achilles",
            "Talus:calcaneal_tuberosity",
        ),
    ),
    ("plantaris", 100.0, 1, ("Femur:lateral_supracondylar", "Tibia:achilles", "Talus:calcaneal_tuberosity_medial")),
    # ankle: tibia and fibula to the foot
    (
        "soleus",
        3000.0,
        3,
        ("Tibia:soleal_line..fibula_posterior_proximal", "Tibia:achilles", "Talus:calcaneal_tuberosity"),
    ),
    (
        "tibialis_anterior",
        900.0,
        2,
        (
            "Tibia:lateral_shaft_proximal..lateral_shaft_middle",
            "Tibia:retinaculum",
            "Talus:retinaculum_medial",
            "Talus:medial_cuneiform",
        ),
    ),
    (
        "tibialis_posterior",
        1200.0,
        2,
        (
            "Tibia:interosseous_proximal..interosseous_middle",
            "Tibia:medial_malleolus",
            "Talus:sustentaculum",
            "Talus:navicular_tuberosity",
        ),
    ),
    (
        "peroneus_longus",
        900.0,
        2,
        (
            "Tibia:fibula_lateral_proximal..fibula_lateral_middle",
            "Tibia:lateral_malleolus",
            "Talus:peroneal_trochlea",
            "Talus:cuboid_groove",
            "Talus:first_metatarsal_base",
        ),
    ),
    (
        "peroneus_brevis",
        450.0,
        2,
        (
            "Tibia:fibula_lateral_middle..fibula_lateral_distal",
            "Tibia:lateral_malleolus",
            "Talus:peroneal_trochlea",
            "Talus:fifth_metatarsal_base",
        ),
    ),
    (
        "peroneus_tertius",
        180.0,
        1,
        ("Tibia:fibula_anterior_distal", "Tibia:retinaculum_lateral", "Talus:fifth_metatarsal_dorsal"),
    ),
    # long toe muscles: tibia and fibula to the toes, under the retinacula and along the foot
    (
        "extensor_hallucis_longus",
        200.0,
        2,
        (
            "Tibia:fibula_anterior_middle..fibula_anterior_distal",
            "Tibia:retinaculum",
            "Talus:retinaculum_medial",
            "Talus:dorsal_head_thumb",
            "FootThumb:dorsal_base",
            "FootThumb:dorsal_tip",
        ),
    ),
    (
        "flexor_hallucis_longus",
        450.0,
        2,
        (
            "Tibia:fibula_posterior_middle..fibula_posterior_distal",
            "Tibia:medial_malleolus",
            "Talus:sustentaculum",
            "Talus:plantar_arch_thumb",
            "Talus:plantar_head_thumb",
            "FootThumb:plantar_base",
            "FootThumb:plantar_tip",
        ),
    ),
    (
        "extensor_digitorum_longus",
        500.0,
        3,
        (
            "Tibia:fibula_anterior_proximal..fibula_anterior_middle",
            "Tibia:retinaculum_lateral",
            "Talus:retinaculum_lateral",
            "Talus:dorsal_head_pinky",
            "FootPinky:dorsal_base",
            "FootPinky:dorsal_tip",
        ),
    ),
    (
        "flexor_digitorum_longus",
        350.0,
        3,
        (
            "Tibia:posterior_shaft_medial..posterior_shaft_medial_distal",
            "Tibia:medial_malleolus",
            "Talus:sustentaculum",
            "Talus:plantar_arch_pinky",
            "Talus:plantar_head_pinky",
            "FootPinky:plantar_base",
            "FootPinky:plantar_tip",
        ),
    ),
    # short toe muscles: within the foot
    (
        "extensor_hallucis_brevis",
        60.0,
        1,
        ("Talus:calcaneus_dorsolateral", "Talus:dorsal_head_thumb", "FootThumb:dorsal_base"),
    ),
    (
        "flexor_hallucis_brevis",
        150.0,
        1,
        ("Talus:plantar_cuneiforms", "Talus:plantar_head_thumb", "FootThumb:plantar_base"),
    ),
    (
        "abductor_hallucis",
        200.0,
        1,
        ("Talus:calcaneus_medial_plantar", "Talus:plantar_head_thumb_medial", "FootThumb:medial_base"),
    ),
    (
        "extensor_digitorum_brevis",
        100.0,
        1,
        ("Talus:calcaneus_dorsolateral", "Talus:dorsal_head_pinky", "FootPinky:dorsal_base"),
    ),
    (
        "flexor_digitorum_brevis",
        250.0,
        1,
        ("Talus:calcaneus_plantar", "Talus:plantar_head_pinky", "FootPinky:plantar_base"),
    ),
    (
        "abductor_digiti_minimi",
        150.0,
        1,
        ("Talus:calcaneus_lateral_plantar", "Talus:fifth_metatarsal_plantar", "FootPinky:lateral_base"),
    ),
)
"""The template, right leg: ``(name, f0 [N], strands, waypoints)`` per muscle, in action order."""


def _origin(body: str) -> np.ndarray:
    """Right-side (lateral, up, forward) position of a body's landmark origin [m]."""
    return np.array([0.0, PELVIS_HEIGHT, 0.0] if body == "Pelvis" else _JOINT[body])


def _side(p: np.ndarray, side: str) -> np.ndarray:
    """(lateral, up, forward) → MASS world axes (x left, y up, z forward) for side 'R' or 'L'."""
    return np.array([-p[0] if side == "R" else p[0], p[1], p[2]])


def _node(body: str, side: str) -> MassNode:
    mass, size = _BODIES[body]
    eye = np.eye(3)
    if body == "Pelvis":
        t = np.array([0.0, PELVIS_HEIGHT, 0.0])
        return MassNode("Pelvis", None, mass, np.array(size), Transform(eye, t), "Free", Transform(eye, t))
    limits = _HINGE_LIMITS.get(body)
    return MassNode(
        name=body + side,
        parent=_PARENT[body] + ("" if _PARENT[body] == "Pelvis" else side),
        mass=mass,
        size=np.array(size),
        body=Transform(eye, _side(np.array(_BOX_CENTRE[body]), side)),
        joint_type="Revolute" if limits else "Ball",
        joint=Transform(eye, _side(np.array(_JOINT[body]), side)),
        axis=np.array([1.0, 0.0, 0.0]) if limits else None,
        lower=np.array([limits[0]]) if limits else None,
        upper=np.array([limits[1]]) if limits else None,
        contact=True,
    )


def _waypoint(spec: str, t: float, side: str) -> tuple[str, np.ndarray]:
    """World rest-pose position of waypoint ``spec`` for a strand at fraction ``t``."""
    body, _, marks = spec.partition(":")
    a, _, b = marks.partition("..")
    table = _LANDMARKS[body]
    pa = np.array(table[a])
    pb = np.array(table[b or a])
    local = (1.0 - t) * pa + t * pb
    p = _origin(body) + local
    name = body if body == "Pelvis" else body + side
    return name, _side(p, side)


def template_units() -> list[MassMuscle]:
    """The 152 units in world rest-pose coordinates (MASS axes), right then left per strand."""
    units: list[MassMuscle] = []
    for name, f0, strands, path in MUSCLES:
        for k in range(strands):
            t = (k + 0.5) / strands
            for side in ("R", "L"):
                bodies, points = zip(*(_waypoint(w, t, side) for w in path), strict=True)
                units.append(
                    MassMuscle(
                        name=f"{side}_{name}" + (f"_{k + 1}" if strands > 1 else ""),
                        f0=f0 / strands,
                        lm=FIBRE_OPTIMAL,
                        lt=TENDON_SLACK,
                        pen_angle=0.0,
                        lmax=0.0,
                        bodies=tuple(bodies),
                        points=np.stack(points),
                    )
                )
    return units


def template_model() -> MassModel:
    """pwm-bench's muscle lower body: DiffRL's 11-body skeleton with the project's 152-unit layout.

    Node order is :data:`~pwm_bench.envs.mass.LOWER_BODY` (pelvis, right leg, left leg), the order
    of the SNU humanoid, so both envs have the same observation layout.
    """
    nodes = {n.name: n for n in [_node("Pelvis", "R"), *(_node(b, s) for s in ("R", "L") for b in _JOINT)]}
    ordered = tuple(nodes[name] for name in LOWER_BODY)
    units = template_units()
    return MassModel(nodes=ordered, muscles=tuple(to_joint_frames(ordered, units)), total_units=len(units))


def span_counts(model: MassModel) -> dict[tuple[str, ...], int]:
    """Units per sequence of distinct bodies spanned (side suffix dropped), e.g. ``('Pelvis', 'Femur')``."""
    counts: dict[tuple[str, ...], int] = {}
    for u in model.muscles:
        seq: list[str] = []
        for b in u.bodies:
            b = b if b == "Pelvis" else b[:-1]  # drop the side suffix
            if not seq or seq[-1] != b:
                seq.append(b)
        key = tuple(seq)
        counts[key] = counts.get(key, 0) + 1
    return counts


def rest_moment_arms(model: MassModel) -> np.ndarray:
    """Moment of each unit's unit tension about each joint centre in the rest pose.

    For every cross-body segment, a unit tension pulls its two end points towards each other; the
    moment about joint ``j`` sums ``(p - c_j) × f`` over the forces on the bodies at or below ``j``.
    A positive x moment on a hinge about +x drives it towards positive angles.

    Returns:
        ``(M, N, 3)`` moments [N·m per N of tension, i.e. m] about node ``n``'s joint, MASS world
        axes (x left, y up, z forward); row 0 (the root) is zero.
    """
    index = {n.name: i for i, n in enumerate(model.nodes)}
    below = np.zeros((len(model.nodes), len(model.nodes)), dtype=bool)  # below[j, b]: b in j's subtree
    for b in range(len(model.nodes)):
        k: int | None = b
        while k is not None:
            below[k, b] = True
            parent = model.nodes[k].parent
            k = None if parent is None else index[parent]
    centres = np.stack([n.joint.t for n in model.nodes])
    out = np.zeros((len(model.muscles), len(model.nodes), 3))
    for m, unit in enumerate(model.muscles):
        ids = [index[b] for b in unit.bodies]
        world = model.rest_points(unit)
        for w in range(len(ids) - 1):
            i, j = ids[w], ids[w + 1]
            if i == j:
                continue
            f = (world[w + 1] - world[w]) / np.linalg.norm(world[w + 1] - world[w])
            for joint in range(1, len(model.nodes)):
                if below[joint, i]:
                    out[m, joint] += np.cross(world[w] - centres[joint], f)
                if below[joint, j]:
                    out[m, joint] += np.cross(world[w + 1] - centres[joint], -f)
    return out


__all__ = ["MUSCLES", "PELVIS_HEIGHT", "rest_moment_arms", "span_counts", "template_model", "template_units"]
