# shellcheck shell=bash
# db.sh — where your local copies of the real corpora live (sourced by run.sh / local/data.sh).
#
# Nothing is downloaded at run time (path.sh switches the Hugging Face libraries
# offline). Fill in the folders you have, here or in the environment
# (e.g.  LLAMA_QUESTIONS=/data/llama-questions ./run.sh); an empty value means
# "not available": local/data.sh then skips that corpus, or uses the built-in
# offline demo data when none is set.

# gpt-omni/VoiceAssistant-400K (training). A folder of the hub's parquet files,
# searched recursively, e.g.
#   ${VOICEASSISTANT_400K}/data/train-00000-of-00xxx.parquet ...
# columns: split_name, index, round, question, answer, answer_snac, question_audio
VOICEASSISTANT_400K=${VOICEASSISTANT_400K:-}

# GSQA/spoken-alpaca-gpt4 (training). A `datasets` save_to_disk folder, i.e. what
#   datasets.load_dataset(...).save_to_disk(DIR) wrote:
#   ${SPOKEN_ALPACA_GPT4}/dataset_dict.json, train/{dataset_info.json,state.json,data-*.arrow}
#   (a single split folder with dataset_info.json/state.json/data-*.arrow works too)
# columns: instruction, input, output, speech_input, input_audio, output_audio, ...
SPOKEN_ALPACA_GPT4=${SPOKEN_ALPACA_GPT4:-}

# fixie-ai/llama-questions (test, 300 rows). Parquet files, e.g.
#   ${LLAMA_QUESTIONS}/data/test-00000-of-00001.parquet
# columns: question, answer, audio
LLAMA_QUESTIONS=${LLAMA_QUESTIONS:-}

# fixie-ai/spoken-web-questions (train 3,778 / test 2,032). Parquet files, e.g.
#   ${SPOKEN_WEB_QUESTIONS}/data/{train,test}-*.parquet
# columns: url, question, answers (list), audio (16 kHz)
SPOKEN_WEB_QUESTIONS=${SPOKEN_WEB_QUESTIONS:-}
